//! `kiln-mock-llm`: a scripted model provider for tests, benchmarks and the
//! demo. It speaks the real wire protocols over real HTTP — OpenAI chat
//! completions (`POST /v1/chat/completions`, also under Azure's
//! `/openai/deployments/{d}/chat/completions`) and Anthropic Messages
//! (`POST /v1/messages`) — so the worker's real clients are what gets tested.
//!
//! A script (a `.json`, `.yaml` or `.yml` file in the scripts directory, or
//! a list of them in one file) says which requests it answers and how:
//!
//! ```yaml
//! name: add-needs-repair
//! match: "`add_with_repair`"        # regex over the spec prompt (first user message)
//! latency_ms: 0                     # optional delay before answering
//! responses:                        # attempt n gets responses[n-1]; the last repeats
//!   - files: [{path: solution.py, content: "def add_with_repair(a, b):\n    return a - b\n"}]
//!   - files: [{path: solution.py, content: "def add_with_repair(a, b):\n    return a + b\n"}]
//! faults:                           # the k-th request of each attempt gets faults[k-1]
//!   - {status: 429, headers: {retry-after-ms: "50"}}
//!   - {status: 503}
//!   - {truncate: true}              # 200, answer cut in half, finish_reason "length"
//! ```
//!
//! A response is one of `files` (answered as Kiln's JSON format), `function`
//! (the seed `{function_name, source_code, imports}` format), or `content`
//! (raw text, e.g. markdown). Named regex groups of `match` are substituted
//! into paths and contents as `{name}`, so one script can answer a thousand
//! generated specs. The attempt number is read from the repair prompt
//! ("Attempt n of m") and requests are told apart by their
//! `X-Kiln-Attempt-Id`, so answers survive worker crashes and retries.
//!
//! A fault is any of: `status` (with an optional raw `body`; without one, a
//! provider-like error body — `quota: true` makes a 429 an
//! `insufficient_quota`), `headers`, `latency_ms`, `truncate`, `malformed`
//! (a 200 whose body is not JSON), `empty` (a 200 with no body), `reset`
//! (the connection breaks mid-answer).
//!
//! Server options: `--rate-limit-rpm N` answers 429 (with `retry-after-ms`)
//! above N requests a minute (a token bucket of N/60 refilled continuously).
//!
//! `POST /_mock/outage {"status": 503}` starts an outage (every request
//! answered with that status) and `{"status": null}` ends it.
//!
//! A worker's pre-flight check (`X-Kiln-Attempt-Id: preflight-…`) is
//! answered `{"files": [], "notes": "ok"}` at once and left out of the log
//! and counters: it belongs to no job, and scripts and counts are per job.
//!
//! `GET /_mock/stats` returns counters (requests, by status, by script,
//! attempt ids requested more than once); `GET /_mock/requests` the log of
//! requests (attempt id, script, attempt, status, authorization, time).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
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
    #[serde(default)]
    pub faults: Vec<Fault>,
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
    /// `stop` unless given (`length` makes a truncated answer).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFile {
    pub path: String,
    pub content: String,
}

/// A misbehaviour injected into one request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub quota: bool,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub malformed: bool,
    #[serde(default)]
    pub empty: bool,
    #[serde(default)]
    pub reset: bool,
}

/// Options of the whole server.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockOptions {
    /// Answer 429 above this many requests a minute (0: no limit).
    pub rate_limit_rpm: u32,
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
    pub status: u16,
    /// The credential header as received (the mock is the provider: it is
    /// supposed to see the key; tests check nobody else does).
    pub authorization: Option<String>,
    pub at_ms: u128,
    /// The request's parameters that Kiln's settings choose: `temperature`,
    /// `max_tokens` / `max_completion_tokens` and `response_format`'s type
    /// (absent ones are null), and in `extra` every other field but the
    /// conversation (`KILN_LLM_EXTRA_BODY`, `options.extra_body`).
    #[serde(default)]
    pub params: Value,
}

#[derive(Default)]
struct Log {
    requests: Vec<RequestRecord>,
    /// Requests so far per attempt id (or per script without one), to pick
    /// the fault of the k-th request.
    seen: HashMap<String, usize>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Clone)]
struct MockState {
    scripts: Arc<Vec<Script>>,
    log: Arc<Mutex<Log>>,
    options: MockOptions,
    bucket: Arc<Mutex<Bucket>>,
    /// While set, every request is answered with this status (an outage).
    outage: Arc<Mutex<Option<u16>>>,
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
    outage: Arc<Mutex<Option<u16>>>,
    shutdown: CancellationToken,
}

impl MockServer {
    /// Starts serving `scripts` on `listener`.
    pub fn start(listener: TcpListener, scripts: Vec<ScriptFile>) -> Result<MockServer, MockError> {
        MockServer::start_with(listener, scripts, MockOptions::default())
    }

    pub fn start_with(
        listener: TcpListener,
        scripts: Vec<ScriptFile>,
        options: MockOptions,
    ) -> Result<MockServer, MockError> {
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
            options,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(options.rate_limit_rpm) / 60.0,
                at: Instant::now(),
            })),
            outage: Arc::new(Mutex::new(None)),
        };
        let addr = listener.local_addr().map_err(|source| MockError::Read {
            path: "listener".into(),
            source,
        })?;
        let shutdown = CancellationToken::new();
        let router = axum::Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/chat/completions", post(openai))
            .route("/openai/deployments/{deployment}/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/messages", post(anthropic))
            .route("/_mock/stats", get(stats))
            .route("/_mock/requests", get(requests))
            .route("/_mock/outage", post(set_outage))
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
            outage: state.outage,
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

    /// Starts (`Some(status)`) or ends (`None`) an outage: while it lasts
    /// every request is answered with that status.
    pub fn set_outage(&self, status: Option<u16>) {
        *self.outage.lock().expect("outage lock") = status;
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
        return json!({ "files": files, "notes": "" }).to_string();
    }
    if let Some(function) = &response.function {
        return substitute(&function.to_string(), captures);
    }
    substitute(response.content.as_deref().unwrap_or(""), captures)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    OpenAi,
    Anthropic,
}

/// What the handlers share: pick the script, the fault and the answer.
struct Answer {
    content: String,
    finish_reason: String,
    fault: Option<Fault>,
    latency: Duration,
    model: String,
    prompt_chars: usize,
    record_index: usize,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl MockState {
    /// Takes a token from the rate-limit bucket; `Err(wait)` when empty.
    fn admit(&self) -> Result<(), Duration> {
        let rpm = f64::from(self.options.rate_limit_rpm);
        if rpm == 0.0 {
            return Ok(());
        }
        let per_second = rpm / 60.0;
        let capacity = per_second.max(1.0);
        let mut bucket = self.bucket.lock().expect("bucket lock");
        let now = Instant::now();
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    fn answer(
        &self,
        headers: &HeaderMap,
        model: String,
        messages: &[Value],
        system_chars: usize,
        params: Value,
    ) -> Answer {
        let spec_prompt = messages
            .iter()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let attempt = attempt_number(messages);
        let matched = self
            .scripts
            .iter()
            .find_map(|s| s.regex.captures(spec_prompt).map(|c| (s, c)));
        let attempt_id = headers
            .get("x-kiln-attempt-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let authorization = ["authorization", "x-api-key", "api-key"]
            .into_iter()
            .find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_owned));
        let script_name = matched.as_ref().map(|(s, _)| s.file.name.clone());
        let mut log = self.log.lock().expect("log lock");
        let key = attempt_id
            .clone()
            .unwrap_or_else(|| script_name.clone().unwrap_or_default());
        let seen = log.seen.entry(key).or_default();
        *seen += 1;
        let k = *seen;
        log.requests.push(RequestRecord {
            attempt_id,
            script: script_name,
            attempt,
            model: model.clone(),
            status: 200,
            authorization,
            at_ms: now_ms(),
            params,
        });
        let record_index = log.requests.len() - 1;
        drop(log);

        let prompt_chars = system_chars
            + messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum::<usize>();
        let Some((script, caps)) = matched else {
            return Answer {
                content: "I have no scripted answer for this request.".into(),
                finish_reason: "stop".into(),
                fault: None,
                latency: Duration::ZERO,
                model,
                prompt_chars,
                record_index,
            };
        };
        let captures: HashMap<String, String> = script
            .regex
            .capture_names()
            .flatten()
            .filter_map(|n| caps.name(n).map(|m| (n.to_owned(), m.as_str().to_owned())))
            .collect();
        let responses = &script.file.responses;
        let chosen = responses
            .get((attempt as usize).saturating_sub(1))
            .or_else(|| responses.last());
        Answer {
            content: chosen.map(|r| render(r, &captures)).unwrap_or_default(),
            finish_reason: chosen
                .and_then(|r| r.finish_reason.clone())
                .unwrap_or_else(|| "stop".into()),
            fault: script.file.faults.get(k - 1).cloned(),
            latency: Duration::from_millis(script.file.latency_ms),
            model,
            prompt_chars,
            record_index,
        }
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(r) = self.log.lock().expect("log lock").requests.get_mut(index) {
            r.status = status;
        }
    }
}

/// A provider-like error body for a status.
fn error_body(protocol: Protocol, status: u16, quota: bool) -> String {
    let (kind, message) = match (status, quota) {
        (429, true) => (
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        (429, false) => ("rate_limit_exceeded", "Rate limit reached for requests."),
        (529, _) => ("overloaded_error", "Overloaded"),
        (401, _) => ("invalid_api_key", "Incorrect API key provided."),
        (500..=599, _) => ("server_error", "The server had an error while processing your request."),
        _ => ("invalid_request_error", "The request was rejected."),
    };
    match protocol {
        Protocol::OpenAi => json!({"error": {"message": message, "type": kind, "code": kind}}).to_string(),
        Protocol::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    }
}

fn with_headers(mut response: Response, headers: &BTreeMap<String, String>) -> Response {
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// Applies the fault (if any) and builds the final response.
async fn respond(
    state: &MockState,
    protocol: Protocol,
    answer: Answer,
    body_of: impl Fn(&str, &str) -> Value,
) -> Response {
    if let Err(wait) = state.admit() {
        state.set_status(answer.record_index, 429);
        let response = (StatusCode::TOO_MANY_REQUESTS, error_body(protocol, 429, false)).into_response();
        let wait_ms = (wait.as_millis() as u64).max(1).to_string();
        return with_headers(response, &BTreeMap::from([("retry-after-ms".to_owned(), wait_ms)]));
    }
    let outage = *state.outage.lock().expect("outage lock");
    let fault = match outage {
        Some(status) => Fault {
            status: Some(status),
            ..Fault::default()
        },
        None => answer.fault.unwrap_or_default(),
    };
    let latency = answer.latency + Duration::from_millis(fault.latency_ms);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = fault.status.filter(|s| *s != 200) {
        state.set_status(answer.record_index, status);
        let body = fault
            .body
            .clone()
            .unwrap_or_else(|| error_body(protocol, status, fault.quota));
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return with_headers((code, body).into_response(), &fault.headers);
    }
    let body = if let Some(raw) = fault.body {
        raw
    } else if fault.malformed {
        "<html><body>502 Bad Gateway</body></html>".to_owned()
    } else if fault.empty {
        String::new()
    } else if fault.truncate {
        let half: String = answer
            .content
            .chars()
            .take(answer.content.chars().count() / 2)
            .collect();
        body_of(&half, "length").to_string()
    } else {
        body_of(&answer.content, &answer.finish_reason).to_string()
    };
    if fault.reset {
        // Half an answer, then the connection breaks: a reset mid-response.
        let half = body[..body.len() / 2].to_owned();
        let stream = futures::stream::iter([
            Ok::<_, std::io::Error>(axum::body::Bytes::from(half)),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset")),
        ]);
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body(Body::from_stream(stream))
            .expect("valid response");
        return with_headers(response, &fault.headers);
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("valid response");
    with_headers(response, &fault.headers)
}

/// What [`RequestRecord::params`] keeps of a request body.
fn params_of(body: &Value) -> Value {
    json!({
        "temperature": body["temperature"],
        "max_tokens": body["max_tokens"],
        "max_completion_tokens": body["max_completion_tokens"],
        "response_format": body["response_format"]["type"],
        "extra": body.as_object().map(|fields| {
            fields
                .iter()
                .filter(|(name, _)| !KNOWN_FIELDS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<serde_json::Map<_, _>>()
        }),
    })
}

/// The request fields Kiln always sets itself (either protocol).
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "tools",
    "tool_choice",
];

/// True for a worker's pre-flight request (see the module doc).
fn preflight(headers: &HeaderMap) -> bool {
    headers
        .get("x-kiln-attempt-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|id| id.starts_with("preflight-"))
}

const PREFLIGHT_ANSWER: &str = r#"{"files": [], "notes": "ok"}"#;

async fn openai(State(state): State<MockState>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if preflight(&headers) {
        return Json(json!({
            "id": "chatcmpl-mock-preflight",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": PREFLIGHT_ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }))
        .into_response();
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("deployment").to_owned();
    let answer = state.answer(&headers, model, &messages, 0, params_of(&body));
    let (model, prompt_chars) = (answer.model.clone(), answer.prompt_chars);
    respond(&state, Protocol::OpenAi, answer, move |content, finish| {
        json!({
            "id": format!("chatcmpl-mock-{}", uuid::Uuid::new_v4().simple()),
            "object": "chat.completion",
            "created": now_ms() / 1000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_chars / 4 + 1,
                "completion_tokens": content.len() / 4 + 1,
                "total_tokens": prompt_chars / 4 + content.len() / 4 + 2,
            },
        })
    })
    .await
}

async fn anthropic(State(state): State<MockState>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if preflight(&headers) {
        return Json(json!({
            "id": "msg_mock_preflight",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": PREFLIGHT_ANSWER}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }))
        .into_response();
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("claude").to_owned();
    let system_chars = body["system"].as_str().map_or(0, str::len);
    let forced_tool = body["tool_choice"]["name"].as_str().map(str::to_owned);
    let answer = state.answer(&headers, model, &messages, system_chars, params_of(&body));
    let (model, prompt_chars) = (answer.model.clone(), answer.prompt_chars);
    respond(&state, Protocol::Anthropic, answer, move |content, finish| {
        // With a forced tool, the answer is the tool call's input, when it
        // parses as JSON (a truncated one does not: then it is text).
        let block = match (&forced_tool, serde_json::from_str::<Value>(content)) {
            (Some(name), Ok(input)) => json!({"type": "tool_use", "id": "toolu_mock", "name": name, "input": input}),
            _ => json!({"type": "text", "text": content}),
        };
        let stop = match (finish, &forced_tool) {
            ("length", _) => "max_tokens",
            (_, Some(_)) => "tool_use",
            _ => "end_turn",
        };
        json!({
            "id": format!("msg_mock_{}", uuid::Uuid::new_v4().simple()),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": {"input_tokens": prompt_chars / 4 + 1, "output_tokens": content.len() / 4 + 1},
        })
    })
    .await
}

async fn stats(State(state): State<MockState>) -> Json<Value> {
    let log = state.log.lock().expect("log lock");
    let mut by_script: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_attempt_id: HashMap<&str, u64> = HashMap::new();
    for r in &log.requests {
        *by_script
            .entry(r.script.clone().unwrap_or_else(|| "(unmatched)".into()))
            .or_default() += 1;
        *by_status.entry(r.status.to_string()).or_default() += 1;
        if let Some(id) = &r.attempt_id {
            *by_attempt_id.entry(id).or_default() += 1;
        }
    }
    let repeated = by_attempt_id.values().filter(|&&n| n > 1).count();
    Json(json!({
        "requests": log.requests.len(),
        "by_status": by_status,
        "by_script": by_script,
        "attempt_ids": by_attempt_id.len(),
        "attempt_ids_requested_more_than_once": repeated,
    }))
}

async fn set_outage(State(state): State<MockState>, Json(body): Json<Value>) -> Json<Value> {
    let status = body["status"].as_u64().and_then(|s| u16::try_from(s).ok());
    *state.outage.lock().expect("outage lock") = status;
    Json(json!({ "outage": status }))
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
            finish_reason: None,
        };
        assert!(render(&r, &caps).contains("def add_7(a, b)"));
    }
}
