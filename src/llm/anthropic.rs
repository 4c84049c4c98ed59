//! Anthropic Messages (`POST {base}/messages`).
//!
//! JSON output: Anthropic has no `response_format`; its equivalent is a tool
//! with an input schema that the model is forced to call. Kiln defines one
//! tool, `submit_files`, whose input is the files object, and turns the
//! tool call's input back into the JSON text the parser expects.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::{parse_body, post_json};
use super::{
    Answer, ChatRequest, LlmClient, LlmError, Role, Sent, add_extra_fields, files_schema, http_client, name_the_setting,
};
use crate::config::{JsonMode, LlmSettings, TokensParam};
use crate::domain::TokenUsage;

/// The Messages API version Kiln speaks.
const API_VERSION: &str = "2023-06-01";
const TOOL: &str = "submit_files";

#[derive(Debug, Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    url: String,
    json_mode: JsonMode,
    extra_body: serde_json::Map<String, Value>,
    timeout: Duration,
}

impl AnthropicClient {
    pub fn new(settings: &LlmSettings) -> Result<AnthropicClient, LlmError> {
        let mut headers = vec![("anthropic-version", API_VERSION.to_owned(), false)];
        if let Some(key) = &settings.api_key {
            // The key is exposed here and in the OpenAI client's constructor only, into a
            // header marked sensitive (invariant 7).
            headers.push(("x-api-key", key.expose_secret().to_owned(), true));
        }
        Ok(AnthropicClient {
            http: http_client(&headers, settings.request_timeout)?,
            url: format!("{}/messages", settings.base_url.trim_end_matches('/')),
            json_mode: settings.json_mode,
            extra_body: settings.extra_body.clone(),
            timeout: settings.request_timeout,
        })
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

// Field names mirror the provider's JSON.
#[allow(clippy::struct_field_names)]
#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: i64,
    #[serde(default)]
    output_tokens: i64,
    #[serde(default)]
    cache_creation_input_tokens: Option<i64>,
    #[serde(default)]
    cache_read_input_tokens: Option<i64>,
}

impl LlmClient for AnthropicClient {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Answer, LlmError>> {
        Box::pin(async move {
            let system: Vec<&str> = request
                .messages
                .iter()
                .filter(|m| m.role == Role::System)
                .map(|m| m.content.as_str())
                .collect();
            let messages: Vec<Value> = request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect();
            let mut body = json!({
                "model": request.model,
                "max_tokens": request.max_tokens,
                "system": system.join("\n\n"),
                "messages": messages,
            });
            if let Some(t) = request.temperature {
                body["temperature"] = t.into();
            }
            if request.json && self.json_mode != JsonMode::Off {
                body["tools"] = json!([{
                    "name": TOOL,
                    "description": "Submit the complete files of the answer.",
                    "input_schema": files_schema(),
                }]);
                body["tool_choice"] = json!({"type": "tool", "name": TOOL});
            }
            add_extra_fields(&mut body, &self.extra_body, request);
            let sent = Sent {
                json_mode: (request.json && self.json_mode != JsonMode::Off).then_some(self.json_mode),
                tokens_param: TokensParam::MaxTokens,
                temperature: request.temperature,
            };
            let text = post_json(&self.http, &self.url, &request.attempt_id, &body, self.timeout)
                .await
                .map_err(|e| name_the_setting(e, sent, &request.model))?;
            parse_message(&text)
        })
    }
}

/// Reads a Messages response body: the forced tool call's input as JSON
/// text, or else the text blocks.
pub(crate) fn parse_message(text: &str) -> Result<Answer, LlmError> {
    let message: MessageResponse = parse_body(text)?;
    let mut content = String::new();
    for block in &message.content {
        match block {
            Block::ToolUse { name, input } if name == TOOL => {
                content = input.to_string();
                break;
            }
            Block::Text { text } => content.push_str(text),
            Block::ToolUse { .. } | Block::Other => {}
        }
    }
    let usage = message.usage.map_or_else(TokenUsage::default, |u| TokenUsage {
        prompt_tokens: u.input_tokens
            + u.cache_creation_input_tokens.unwrap_or(0)
            + u.cache_read_input_tokens.unwrap_or(0),
        completion_tokens: u.output_tokens,
    });
    Ok(Answer {
        content,
        finish_reason: message.stop_reason,
        usage,
    })
}
