//! OpenAI-compatible chat completions (`POST {base}/chat/completions`), and
//! Azure OpenAI deployments, which speak the same body with a different URL
//! and key header.
//!
//! The same wire protocol serves OpenAI, vLLM, Ollama, llama.cpp's server,
//! LM Studio, LiteLLM and `kiln-mock-llm`; `KILN_LLM_BASE_URL` picks one.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::wire::{parse_body, post_json};
use super::{
    Answer, ChatRequest, LlmClient, LlmError, Sent, add_extra_fields, files_schema, http_client, name_the_setting,
};
use crate::config::{JsonMode, LlmProvider, LlmSettings, TokensParam};
use crate::domain::TokenUsage;

/// A client for one OpenAI-compatible (or Azure OpenAI) endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base: String,
    azure_api_version: Option<String>,
    json_mode: JsonMode,
    tokens_param: TokensParam,
    extra_body: serde_json::Map<String, serde_json::Value>,
    timeout: Duration,
}

impl OpenAiClient {
    pub fn new(settings: &LlmSettings) -> Result<OpenAiClient, LlmError> {
        let mut headers = Vec::new();
        if let Some(key) = &settings.api_key {
            // The key is exposed here and in the Anthropic client's constructor only, into a
            // header marked sensitive (invariant 7).
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
            tokens_param: settings.tokens_param,
            extra_body: settings.extra_body.clone(),
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
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Answer, LlmError>> {
        Box::pin(async move {
            let tokens_param = request.tokens_param.unwrap_or(self.tokens_param);
            let mut body = json!({ "messages": request.messages });
            body[tokens_param.as_str()] = request.max_tokens.into();
            if let Some(t) = request.temperature {
                body["temperature"] = t.into();
            }
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
            add_extra_fields(&mut body, &self.extra_body, request);
            let sent = Sent {
                json_mode: (request.json && self.json_mode != JsonMode::Off).then_some(self.json_mode),
                tokens_param,
                temperature: request.temperature,
            };
            let text = post_json(
                &self.http,
                &self.url(&request.model),
                &request.attempt_id,
                &body,
                self.timeout,
            )
            .await
            .map_err(|e| name_the_setting(e, sent, &request.model))?;
            parse_completion(&text)
        })
    }
}

/// Reads a chat-completions response body.
pub(crate) fn parse_completion(text: &str) -> Result<Answer, LlmError> {
    let completion: Completion = parse_body(text)?;
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
    Ok(Answer {
        content,
        finish_reason: choice.finish_reason,
        usage,
    })
}
