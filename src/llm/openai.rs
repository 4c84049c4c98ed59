//! OpenAI-compatible chat completions (`POST {base}/chat/completions`).
//!
//! The same wire protocol serves OpenAI, vLLM, Ollama, llama.cpp's server,
//! LM Studio, LiteLLM and `kiln-mock-llm`; `KILN_LLM_BASE_URL` picks one.

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{ChatRequest, ChatResponse, LlmClient, LlmError, clip_provider_message};
use crate::store::attempts::TokenUsage;

/// A client for one OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl OpenAiClient {
    /// `base_url` ends before `/chat/completions` (e.g. `https://api.openai.com/v1`).
    pub fn new(base_url: &str, api_key: Option<&SecretString>, timeout: Duration) -> Result<OpenAiClient, LlmError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            // Marked sensitive so reqwest's and hyper's debug output hide it;
            // this is the only place the key is exposed (invariant 7).
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).map_err(|_| LlmError::Rejected {
                    status: 0,
                    message: "the API key contains characters not allowed in an HTTP header".into(),
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        Ok(OpenAiClient {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            timeout,
        })
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
                "model": request.model,
                "messages": request.messages,
                "max_tokens": request.max_tokens,
                "temperature": 0.2,
            });
            if request.json {
                body["response_format"] = json!({"type": "json_object"});
            }
            let response = self
                .http
                .post(&self.url)
                .header("X-Kiln-Attempt-Id", &request.attempt_id)
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
            let completion: Completion = serde_json::from_str(&text).map_err(|e| {
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
            Ok(ChatResponse {
                content: choice.message.content.unwrap_or_default(),
                finish_reason: choice.finish_reason,
                usage,
            })
        })
    }
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(timeout)
    } else {
        // Without the URL: it is configuration, not news, and keeps logs short.
        LlmError::Transport(crate::telemetry::error_chain(e))
    }
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
