//! `kiln-mock-llm`: an OpenAI-compatible chat-completions server that answers
//! from scripts, for tests, benchmarks and the demo. It speaks the real wire
//! protocol over real HTTP, so the worker's real client is what gets tested.
//!
//! A script (a `.json`, `.yaml` or `.yml` file in the scripts directory, or
//! a list of them in one file) says which requests it answers and what:
//!
//! ```yaml
//! name: add-needs-repair
//! match: "`add_with_repair`"        # regex over the spec prompt (first user message)
//! latency_ms: 0                     # optional delay before answering
//! responses:                        # attempt n gets responses[n-1]; the last repeats
//!   - files: [{path: solution.py, content: "def add_with_repair(a, b):\n    return a - b\n"}]
//!   - files: [{path: solution.py, content: "def add_with_repair(a, b):\n    return a + b\n"}]
//! ```
//!
//! A response is one of `files` (answered as Kiln's JSON format), `function`
//! (the seed `{function_name, source_code, imports}` format), or `content`
//! (raw text, e.g. markdown). Named regex groups of `match` are substituted
//! into paths and contents as `{name}`, so one script can answer a thousand
//! generated specs. The attempt number is read from the repair prompt
//! ("Attempt n of m"), so answers are stateless and survive worker crashes.
//!
//! `GET /_mock/stats` returns request counters; `GET /_mock/requests` the
//! log of requests (attempt id, script, attempt number, time).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why scripts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Script { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptFile {
    pub name: String,
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub latency_ms: u64,
    pub responses: Vec<ScriptedResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedResponse {
    #[serde(default)]
    pub files: Option<Vec<ScriptedFile>>,
    #[serde(default)]
    pub function: Option<Value>,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFile {
    pub path: String,
    pub content: String,
}

struct Script {
    file: ScriptFile,
    regex: Regex,
}

/// One request as the mock saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    pub attempt_id: Option<String>,
    pub script: Option<String>,
    pub attempt: u32,
    pub model: String,
    pub at_ms: u128,
}

#[derive(Default)]
struct Log {
    requests: Vec<RequestRecord>,
}

#[derive(Clone)]
struct MockState {
    scripts: Arc<Vec<Script>>,
    log: Arc<Mutex<Log>>,
}

/// Loads every script in a directory (sorted by file name; first match wins).
pub fn load_scripts(dir: &Path) -> Result<Vec<ScriptFile>, MockError> {
    let read_err = |source| MockError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut scripts = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| MockError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| MockError::Script {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let items = match value {
            Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            let script: ScriptFile = serde_json::from_value(item).map_err(|e| MockError::Script {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            scripts.push(script);
        }
    }
    Ok(scripts)
}

/// A running mock server.
pub struct MockServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    shutdown: CancellationToken,
}

impl MockServer {
    /// Starts serving `scripts` on `listener`.
    pub fn start(listener: TcpListener, scripts: Vec<ScriptFile>) -> Result<MockServer, MockError> {
        let compiled = scripts
            .into_iter()
            .map(|file| {
                Regex::new(&file.pattern)
                    .map(|regex| Script {
                        file: file.clone(),
                        regex,
                    })
                    .map_err(|e| MockError::Script {
                        path: file.name.clone(),
                        message: format!("match: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = MockState {
            scripts: Arc::new(compiled),
            log: Arc::new(Mutex::new(Log::default())),
        };
        let addr = listener.local_addr().map_err(|source| MockError::Read {
            path: "listener".into(),
            source,
        })?;
        let shutdown = CancellationToken::new();
        let router = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/_mock/stats", get(stats))
            .route("/_mock/requests", get(requests))
            .with_state(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(MockServer {
            addr,
            log: state.log,
            shutdown,
        })
    }

    /// Base URL for `KILN_LLM_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.lock().expect("log lock").requests.clone()
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn attempt_number(messages: &[Value]) -> u32 {
    static ATTEMPT: std::sync::LazyLock<Regex> =
        std::sync::LazyLock::new(|| Regex::new(r"Attempt (\d+) of \d+").expect("valid regex"));
    messages
        .iter()
        .rev()
        .filter(|m| m["role"] == "user")
        .find_map(|m| m["content"].as_str().and_then(|c| ATTEMPT.captures(c)))
        .and_then(|c| c[1].parse().ok())
        .unwrap_or(1)
}

fn substitute(text: &str, captures: &HashMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (name, value) in captures {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

fn render(response: &ScriptedResponse, captures: &HashMap<String, String>) -> String {
    if let Some(files) = &response.files {
        let files: Vec<ScriptedFile> = files
            .iter()
            .map(|f| ScriptedFile {
                path: substitute(&f.path, captures),
                content: substitute(&f.content, captures),
            })
            .collect();
        return json!({ "files": files }).to_string();
    }
    if let Some(function) = &response.function {
        return substitute(&function.to_string(), captures);
    }
    substitute(response.content.as_deref().unwrap_or(""), captures)
}

async fn chat(State(state): State<MockState>, headers: axum::http::HeaderMap, Json(body): Json<Value>) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("mock").to_owned();
    let spec_prompt = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let attempt = attempt_number(&messages);
    let matched = state
        .scripts
        .iter()
        .find_map(|s| s.regex.captures(spec_prompt).map(|c| (s, c)));
    let attempt_id = headers
        .get("x-kiln-attempt-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let record = RequestRecord {
        attempt_id,
        script: matched.as_ref().map(|(s, _)| s.file.name.clone()),
        attempt,
        model: model.clone(),
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    };
    state.log.lock().expect("log lock").requests.push(record);

    let content = match &matched {
        None => "I have no scripted answer for this request.".to_owned(),
        Some((script, caps)) => {
            if script.file.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(script.file.latency_ms)).await;
            }
            let captures: HashMap<String, String> = script
                .regex
                .capture_names()
                .flatten()
                .filter_map(|n| caps.name(n).map(|m| (n.to_owned(), m.as_str().to_owned())))
                .collect();
            let responses = &script.file.responses;
            match responses
                .get((attempt as usize).saturating_sub(1))
                .or_else(|| responses.last())
            {
                Some(r) => render(r, &captures),
                None => String::new(),
            }
        }
    };
    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(str::len)
        .sum();
    let usage = json!({
        "prompt_tokens": prompt_chars / 4 + 1,
        "completion_tokens": content.len() / 4 + 1,
        "total_tokens": prompt_chars / 4 + content.len() / 4 + 2,
    });
    let body = json!({
        "id": format!("chatcmpl-mock-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn stats(State(state): State<MockState>) -> Json<Value> {
    let log = state.log.lock().expect("log lock");
    let mut by_script: HashMap<String, u64> = HashMap::new();
    let mut by_attempt_id: HashMap<&str, u64> = HashMap::new();
    for r in &log.requests {
        *by_script
            .entry(r.script.clone().unwrap_or_else(|| "(unmatched)".into()))
            .or_default() += 1;
        if let Some(id) = &r.attempt_id {
            *by_attempt_id.entry(id).or_default() += 1;
        }
    }
    let repeated = by_attempt_id.values().filter(|&&n| n > 1).count();
    Json(json!({
        "requests": log.requests.len(),
        "by_script": by_script,
        "attempt_ids": by_attempt_id.len(),
        "attempt_ids_requested_more_than_once": repeated,
    }))
}

async fn requests(State(state): State<MockState>) -> Json<Vec<RequestRecord>> {
    Json(state.log.lock().expect("log lock").requests.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_number_comes_from_the_latest_repair_prompt() {
        let m = vec![
            json!({"role": "system", "content": "s"}),
            json!({"role": "user", "content": "spec"}),
            json!({"role": "assistant", "content": "a"}),
            json!({"role": "user", "content": "Attempt 3 of 4. Your previous answer failed"}),
        ];
        assert_eq!(attempt_number(&m), 3);
        assert_eq!(attempt_number(&m[..2]), 1);
    }

    #[test]
    fn named_groups_are_substituted() {
        let caps = HashMap::from([("name".to_owned(), "add_7".to_owned())]);
        let r = ScriptedResponse {
            files: Some(vec![ScriptedFile {
                path: "solution.py".into(),
                content: "def {name}(a, b):\n    return a + b\n".into(),
            }]),
            function: None,
            content: None,
        };
        assert!(render(&r, &caps).contains("def add_7(a, b)"));
    }
}
