//! What clients submit: batches of specs (`function` or `service`) and options.
//!
//! Parsing is strict and every rejection names the offending field as a path
//! into the request body (`specs[3].endpoints[0].method`), because the HTTP
//! contract promises a 4xx that says exactly what is wrong and writes nothing.
//! Unknown fields are rejected too: a misspelt option silently ignored is a
//! batch run with the wrong settings.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::TokensParam;
use crate::values::{MAX_INT_DIGITS, Py, Side};

/// A rejected request: the path of the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `POST /v1/batches` body after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    pub name: Option<String>,
    pub specs: Vec<Spec>,
    pub options: Options,
}

/// One unit of work: a function to implement or a service to build.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Function(FunctionSpec),
    Service(ServiceSpec),
}

/// By hand rather than serde's internally tagged enum, which buffers
/// values in a form that refuses ints between 2^64 and 2^128: a stored
/// spec whose expected value is `2**64` would be unreadable. Checks only
/// the shape; [`Spec::from_value`] validates a submitted spec.
impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Spec, D::Error> {
        use serde::de::Error as _;
        let Value::Object(mut map) = Value::deserialize(d)? else {
            return Err(D::Error::custom("a spec is a JSON object"));
        };
        let kind = map.remove("kind");
        let rest = Value::Object(map);
        match kind.as_ref().and_then(Value::as_str) {
            Some("function") => serde_json::from_value(rest)
                .map(Spec::Function)
                .map_err(D::Error::custom),
            Some("service") => serde_json::from_value(rest)
                .map(Spec::Service)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom("`kind` must be \"function\" or \"service\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecKind {
    Function,
    Service,
}

impl SpecKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecKind::Function => "function",
            SpecKind::Service => "service",
        }
    }
}

impl Spec {
    pub fn kind(&self) -> SpecKind {
        match self {
            Spec::Function(_) => SpecKind::Function,
            Spec::Service(_) => SpecKind::Service,
        }
    }

    /// sha256 of the canonical JSON of the spec (object keys sorted), the
    /// identity used for result reuse: equal specs hash equal whatever the
    /// key order or whitespace they were submitted with.
    pub fn sha256(&self) -> String {
        let canonical =
            serde_json::to_vec(&serde_json::to_value(self).expect("specs serialise")).expect("values serialise");
        hex::encode(Sha256::digest(canonical))
    }

    /// A short human label for logs and listings.
    pub fn label(&self) -> &str {
        match self {
            Spec::Function(f) => f.entry_point.as_deref().unwrap_or("function"),
            Spec::Service(s) => &s.service_name,
        }
    }
}

/// `kind: "function"` — one Python function, judged by test cases and/or pytest code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub task_description: String,
    /// Name of the function to implement. Derived from `prompt` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
    /// Signature and docstring to complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_types: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// `input` as an object → keyword arguments, array → positional, else one
    /// argument; compared with `expected` after JSON normalisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_cases: Vec<TestCase>,
    /// pytest source; the generated module is importable as `solution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub input: Value,
    pub expected: Value,
}

/// `kind: "service"` — a FastAPI microservice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub service_name: String,
    pub description: String,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub database_tables: Vec<Table>,
    /// Free-form descriptions (strings or objects) of APIs the service calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_apis: Vec<Value>,
    /// Free-form requirement (string, object or boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiting: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching: Option<Value>,
    /// The module holding the FastAPI app, as uvicorn names it
    /// (`notes_api.main`, or `notes_api.main:application` for another
    /// attribute than `app`); found automatically when absent (see
    /// [`crate::validate::layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_module: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    /// Column names, or objects describing them (`{"name", "type", …}`).
    #[serde(default)]
    pub columns: Vec<Value>,
}

/// Batch options, applied to every job of the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Attempts (generate → validate → test) a job may spend per run.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// One model for every attempt…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// …or a ladder: attempt n uses `models[min(n, len) - 1]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Most prompt + completion tokens the whole batch may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    /// Reuse a passing result of an identical spec, prompt version and model.
    #[serde(default)]
    pub cache: bool,
    /// Higher runs first (−1000…1000).
    #[serde(default)]
    pub priority: i32,
    /// Wall clock per sandbox run, seconds (1…900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Completion cap per model request (1…1,000,000); default
    /// `KILN_LLM_MAX_TOKENS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The request field that carries the cap, `max_tokens` or
    /// `max_completion_tokens` (OpenAI's reasoning models); default
    /// `KILN_LLM_TOKENS_PARAM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_param: Option<TokensParam>,
    /// Temperature of first requests, 0…2, or `"off"` to send none (models
    /// that accept only their own); default `KILN_LLM_TEMPERATURE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Temperature>,
    /// Fields added to every model request of the batch, over
    /// `KILN_LLM_EXTRA_BODY` (`{"reasoning_effort": "low"}`); `model`,
    /// `messages` and `stream` are Kiln's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extra_body: Option<serde_json::Map<String, Value>>,
    /// Past successes shown in the first prompt (0…5): the most recent
    /// passing answers to other specs of the same kind, as worked examples.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub examples: u32,
    /// Answers per attempt. Best-of-N is not built yet: only 1 (one answer
    /// per attempt, the default) is accepted, and any other number is
    /// refused by name rather than ignored.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub candidates: u32,
}

fn one() -> u32 {
    1
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one(n: &u32) -> bool {
    *n == 1
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A batch's temperature: a number, or `"off"` for none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Temperature {
    Off(TemperatureOff),
    Value(f32),
}

/// By hand, so a wrong value is told what is expected rather than that it
/// "did not match any variant".
impl<'de> Deserialize<'de> for Temperature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Temperature, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(word) if word == "off" => Ok(Temperature::Off(TemperatureOff::Off)),
            // Temperatures are small: f32 holds every one a provider takes.
            #[allow(clippy::cast_possible_truncation)]
            Value::Number(n) if n.as_f64().is_some() => Ok(Temperature::Value(n.as_f64().unwrap_or_default() as f32)),
            other => Err(serde::de::Error::custom(format!(
                "{other}: expected a number from 0 to 2, or \"off\""
            ))),
        }
    }
}

/// The word that turns the temperature off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemperatureOff {
    Off,
}

impl Temperature {
    /// The temperature to send (`None`: the model's own).
    pub fn to_request(self) -> Option<f32> {
        match self {
            Temperature::Off(TemperatureOff::Off) => None,
            Temperature::Value(t) => Some(t),
        }
    }
}

/// Largest per-batch `max_tokens`: above every model's output limit.
pub const MAX_MAX_TOKENS: u32 = 1_000_000;

fn default_max_attempts() -> u32 {
    3
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_attempts: default_max_attempts(),
            model: None,
            models: Vec::new(),
            budget_tokens: None,
            cache: false,
            priority: 0,
            timeout_s: None,
            max_tokens: None,
            tokens_param: None,
            temperature: None,
            extra_body: None,
            examples: 0,
            candidates: 1,
        }
    }
}

/// Most attempts a run may be given; more is almost always a mistake that
/// multiplies cost.
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;
pub const MAX_TIMEOUT_S: u32 = 900;
/// Most past successes in a prompt: each costs prompt tokens on every
/// request of the job, and a few show the format as well as many.
pub const MAX_EXAMPLES: u32 = 5;
/// Largest `budget_tokens`: far above any real batch, far below what the
/// database's 64-bit counters hold.
pub const MAX_BUDGET_TOKENS: u64 = 1_000_000_000_000;
/// Longest model name; real ones are well under 100 characters.
pub const MAX_MODEL_CHARS: usize = 200;

/// Checks a model name: it is sent to the provider and shown to operators,
/// so it is short, single-line, and holds no control or bidirectional
/// formatting characters (which make a name display as another).
pub fn check_model_name(model: &str, field: &str) -> Result<(), FieldError> {
    non_blank(model, field)?;
    let chars = model.chars().count();
    if chars > MAX_MODEL_CHARS {
        return Err(FieldError::new(
            field,
            format!("{chars} characters, more than the limit of {MAX_MODEL_CHARS}"),
        ));
    }
    if let Some(c) = model.chars().find(|c| c.is_control() || is_bidi_control(*c)) {
        return Err(FieldError::new(
            field,
            format!("contains the control character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(())
}

/// Unicode's bidirectional formatting characters (and the other invisible
/// format characters of the same blocks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Checks a budget of tokens given at `field`.
pub fn check_budget_tokens(budget: u64, field: &str) -> Result<(), FieldError> {
    if budget == 0 || budget > MAX_BUDGET_TOKENS {
        return Err(FieldError::new(
            field,
            format!("must be between 1 and {MAX_BUDGET_TOKENS}"),
        ));
    }
    Ok(())
}

/// The path of the first string (value or object key) holding U+0000, which
/// no text column of the database can store. Iterative: a body's nesting is
/// bounded by the JSON parser, but this should not rely on it.
pub fn find_nul(value: &Value) -> Option<String> {
    let mut stack: Vec<(&Value, String)> = vec![(value, String::new())];
    while let Some((value, at)) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => return Some(if at.is_empty() { "body".into() } else { at }),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((item, format!("{at}[{i}]")));
                }
            }
            Value::Object(map) => {
                let entries: Vec<_> = map.iter().collect();
                for (key, item) in entries.into_iter().rev() {
                    let shown = key.replace('\0', "\\0");
                    let path = if at.is_empty() { shown } else { format!("{at}.{shown}") };
                    if key.contains('\0') {
                        return Some(path);
                    }
                    stack.push((item, path));
                }
            }
            _ => {}
        }
    }
    None
}

/// serde_json says only "invalid number" when a number (its text kept, see
/// [`canonical_numbers`]) does not fit the integer field it is read into;
/// every numeric field of a request is a whole number with a range.
pub fn number_message(message: String) -> String {
    if message == "invalid number" {
        "not a whole number within this field's range".into()
    } else {
        message
    }
}

/// Reads every number of a request body as Python's `json` would, since
/// numbers keep their text (serde_json's `arbitrary_precision`, for exact
/// big ints): an int (no fraction or exponent) keeps every digit, up to
/// Python's 4,300; any other number becomes the nearest 64-bit float and
/// must be finite. So what is stored is what the sandbox's Python reads,
/// and no number reaches the database that it cannot store.
pub fn canonical_numbers(value: &mut Value) -> Result<(), FieldError> {
    let mut stack: Vec<(&mut Value, String)> = vec![(value, String::new())];
    while let Some((value, at)) = stack.pop() {
        match value {
            Value::Number(n) => {
                let text = n.to_string();
                let field = || if at.is_empty() { "body".to_owned() } else { at.clone() };
                let digits = text.trim_start_matches('-');
                if digits.bytes().all(|b| b.is_ascii_digit()) {
                    if digits.len() > MAX_INT_DIGITS {
                        return Err(FieldError::new(
                            field(),
                            format!(
                                "an integer of {} digits; at most {MAX_INT_DIGITS} (Python's limit)",
                                digits.len()
                            ),
                        ));
                    }
                    continue;
                }
                match text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(float) => *n = float,
                    None => {
                        return Err(FieldError::new(
                            field(),
                            format!("{text} is beyond the range of a 64-bit float"),
                        ));
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    stack.push((item, format!("{at}[{i}]")));
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    stack.push((item, path));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl Options {
    /// The model attempt `n` (1-based) uses, if the batch names one.
    pub fn model_for_attempt(&self, n: u32) -> Option<&str> {
        if let Some(model) = &self.model {
            return Some(model);
        }
        if self.models.is_empty() {
            return None;
        }
        let i = (n.max(1) as usize).min(self.models.len()) - 1;
        Some(&self.models[i])
    }

    fn check(&self, at: &str) -> Result<(), FieldError> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(FieldError::new(
                format!("{at}.max_attempts"),
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        if self.model.is_some() && !self.models.is_empty() {
            return Err(FieldError::new(
                format!("{at}.models"),
                "give either `model` or `models`, not both",
            ));
        }
        if let Some(model) = &self.model {
            check_model_name(model, &format!("{at}.model"))?;
        }
        if self.models.len() > MAX_ATTEMPTS_LIMIT as usize {
            return Err(FieldError::new(
                format!("{at}.models"),
                format!("more than {MAX_ATTEMPTS_LIMIT} models (one per attempt at most)"),
            ));
        }
        for (i, model) in self.models.iter().enumerate() {
            check_model_name(model, &format!("{at}.models[{i}]"))?;
        }
        if let Some(budget) = self.budget_tokens {
            check_budget_tokens(budget, &format!("{at}.budget_tokens"))?;
        }
        if !(-1000..=1000).contains(&self.priority) {
            return Err(FieldError::new(
                format!("{at}.priority"),
                "must be between -1000 and 1000",
            ));
        }
        if let Some(t) = self.timeout_s
            && (t == 0 || t > MAX_TIMEOUT_S)
        {
            return Err(FieldError::new(
                format!("{at}.timeout_s"),
                format!("must be between 1 and {MAX_TIMEOUT_S}"),
            ));
        }
        if self.candidates != 1 {
            return Err(FieldError::new(
                format!("{at}.candidates"),
                "best-of-N (more than one answer per attempt) is not supported by this version of Kiln; \
                 leave it out or give 1",
            ));
        }
        if self.examples > MAX_EXAMPLES {
            return Err(FieldError::new(
                format!("{at}.examples"),
                format!("must be between 0 and {MAX_EXAMPLES}"),
            ));
        }
        self.check_request_parameters(at)
    }

    /// The model request parameters: the same bounds as their settings.
    fn check_request_parameters(&self, at: &str) -> Result<(), FieldError> {
        if let Some(n) = self.max_tokens
            && (n == 0 || n > MAX_MAX_TOKENS)
        {
            return Err(FieldError::new(
                format!("{at}.max_tokens"),
                format!("must be between 1 and {MAX_MAX_TOKENS}"),
            ));
        }
        if let Some(Temperature::Value(t)) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(FieldError::new(
                format!("{at}.temperature"),
                "must be a number from 0 to 2, or \"off\"",
            ));
        }
        if let Some(extra) = &self.extra_body {
            crate::config::check_extra_body(&Value::Object(extra.clone()))
                .map_err(|message| FieldError::new(format!("{at}.extra_body"), message))?;
        }
        Ok(())
    }
}

/// Limits applied while parsing a batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_specs: usize,
    pub max_spec_bytes: usize,
}

const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl BatchRequest {
    /// Parses and validates a batch body. Every error names its field.
    pub fn from_value(body: Value, limits: Limits) -> Result<BatchRequest, FieldError> {
        let Value::Object(mut body) = body else {
            return Err(FieldError::new("body", "expected a JSON object"));
        };
        let name = match body.remove("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 200 => Some(s),
            Some(Value::String(_)) => return Err(FieldError::new("name", "longer than 200 characters")),
            Some(other) => {
                return Err(FieldError::new(
                    "name",
                    format!("expected a string, found {}", type_name(&other)),
                ));
            }
        };
        let options = match body.remove("options") {
            None | Some(Value::Null) => Options::default(),
            Some(v) => typed::<Options>(v, "options")?,
        };
        options.check("options")?;
        let specs = match body.remove("specs") {
            None => return Err(FieldError::new("specs", "missing field")),
            Some(Value::Array(specs)) => specs,
            Some(other) => {
                return Err(FieldError::new(
                    "specs",
                    format!("expected an array, found {}", type_name(&other)),
                ));
            }
        };
        if let Some(unknown) = body.keys().next() {
            return Err(FieldError::new(
                unknown.clone(),
                "unknown field, expected one of `name`, `specs`, `options`",
            ));
        }
        if specs.is_empty() {
            return Err(FieldError::new("specs", "a batch needs at least one spec"));
        }
        if specs.len() > limits.max_specs {
            return Err(FieldError::new(
                "specs",
                format!("{} specs, more than the limit of {}", specs.len(), limits.max_specs),
            ));
        }
        let specs = specs
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let at = format!("specs[{i}]");
                let size = serde_json::to_vec(&raw).map_or(0, |v| v.len());
                if size > limits.max_spec_bytes {
                    return Err(FieldError::new(
                        at,
                        format!("{size} bytes, more than the limit of {}", limits.max_spec_bytes),
                    ));
                }
                Spec::from_value(raw, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchRequest { name, specs, options })
    }
}

impl Spec {
    /// Parses and validates one spec found at `at` in the request.
    pub fn from_value(raw: Value, at: &str) -> Result<Spec, FieldError> {
        let Value::Object(mut map) = raw else {
            return Err(FieldError::new(
                at,
                format!("expected an object, found {}", type_name(&raw)),
            ));
        };
        let kind = match map.remove("kind") {
            None => return Err(FieldError::new(format!("{at}.kind"), "missing field")),
            Some(Value::String(kind)) => kind,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{at}.kind"),
                    format!("expected a string, found {}", type_name(&other)),
                ));
            }
        };
        let rest = Value::Object(map);
        let spec = match kind.as_str() {
            "function" => Spec::Function(typed(rest, at)?),
            "service" => Spec::Service(typed(rest, at)?),
            other => {
                return Err(FieldError::new(
                    format!("{at}.kind"),
                    format!("unknown kind {other:?}, expected \"function\" or \"service\""),
                ));
            }
        };
        spec.check(at)
    }

    /// Semantic checks serde cannot express; fills in derivable fields.
    fn check(self, at: &str) -> Result<Spec, FieldError> {
        match self {
            Spec::Function(mut f) => {
                non_blank(&f.task_description, &format!("{at}.task_description"))?;
                if f.test_cases.is_empty() && f.test_code.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(FieldError::new(
                        format!("{at}.test_cases"),
                        "a function spec needs `test_cases` or `test_code`",
                    ));
                }
                if f.entry_point.is_none() {
                    f.entry_point = f.prompt.as_deref().and_then(first_def_name);
                }
                match &f.entry_point {
                    Some(name) if !is_identifier(name) => {
                        return Err(FieldError::new(
                            format!("{at}.entry_point"),
                            format!("{name:?} is not a Python identifier"),
                        ));
                    }
                    None if !f.test_cases.is_empty() => {
                        return Err(FieldError::new(
                            format!("{at}.entry_point"),
                            "required with `test_cases` (the prompt declares no function to call)",
                        ));
                    }
                    _ => {}
                }
                for (i, case) in f.test_cases.iter().enumerate() {
                    // Tagged values (`{"$set": [...]}`) must be well formed:
                    // a misspelt tag silently read as a dict would fail
                    // every right answer.
                    Py::from_json(&case.expected, Side::Expected)
                        .map_err(|e| FieldError::new(format!("{at}.test_cases[{i}].expected{}", e.path), e.message))?;
                    if let (Value::Object(args), Some(types)) = (&case.input, &f.input_types)
                        && let Some(unknown) = args.keys().find(|k| !types.contains_key(*k))
                    {
                        return Err(FieldError::new(
                            format!("{at}.test_cases[{i}].input.{unknown}"),
                            "not one of the declared `input_types`",
                        ));
                    }
                }
                Ok(Spec::Function(f))
            }
            Spec::Service(s) => {
                non_blank(&s.service_name, &format!("{at}.service_name"))?;
                if !s
                    .service_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(FieldError::new(
                        format!("{at}.service_name"),
                        "use letters, digits, `-` and `_` only",
                    ));
                }
                non_blank(&s.description, &format!("{at}.description"))?;
                if s.endpoints.is_empty() {
                    return Err(FieldError::new(
                        format!("{at}.endpoints"),
                        "a service needs at least one endpoint",
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for (i, e) in s.endpoints.iter().enumerate() {
                    if !HTTP_METHODS.contains(&e.method.as_str()) {
                        return Err(FieldError::new(
                            format!("{at}.endpoints[{i}].method"),
                            format!("{:?} is not one of {}", e.method, HTTP_METHODS.join(", ")),
                        ));
                    }
                    if !e.path.starts_with('/') || e.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(FieldError::new(
                            format!("{at}.endpoints[{i}].path"),
                            format!("{:?} must start with `/` and contain no spaces", e.path),
                        ));
                    }
                    if !seen.insert((e.method.as_str(), e.path.as_str())) {
                        return Err(FieldError::new(
                            format!("{at}.endpoints[{i}]"),
                            format!("{} {} is listed twice", e.method, e.path),
                        ));
                    }
                }
                for (i, t) in s.database_tables.iter().enumerate() {
                    non_blank(&t.name, &format!("{at}.database_tables[{i}].name"))?;
                }
                if let Some(target) = &s.app_module
                    && app_module_parts(target).is_none()
                {
                    return Err(FieldError::new(
                        format!("{at}.app_module"),
                        format!(
                            "{target:?} is not a dotted module name with an optional `:attribute` (e.g. \"notes_api.main\" or \"notes_api.main:app\")"
                        ),
                    ));
                }
                Ok(Spec::Service(s))
            }
        }
    }
}

/// Deserialises `value` as `T`, reporting errors with their path under `at`.
fn typed<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let mut message = e.into_inner().to_string();
        // serde reports an unknown field inside the message, against the
        // parent path; move it into the path so the caller sees which one.
        let mut field = if inner == "." {
            at.to_owned()
        } else {
            format!("{at}.{inner}")
        };
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((name, expected)) = rest.split_once('`')
        {
            if !field.ends_with(name) {
                field = format!("{field}.{name}");
            }
            message = format!("unknown field{expected}");
        } else if let Some(rest) = message.strip_prefix("missing field `")
            && let Some((name, _)) = rest.split_once('`')
        {
            if !field.ends_with(name) {
                field = format!("{field}.{name}");
            }
            message = "missing field".into();
        } else {
            message = number_message(message);
        }
        FieldError::new(field.trim_start_matches('.'), message)
    })
}

fn non_blank(value: &str, field: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// True for a valid (ASCII) Python identifier that is not a keyword.
pub fn is_identifier(name: &str) -> bool {
    const KEYWORDS: [&str; 35] = [
        "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
        "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
        "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
    ];
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !KEYWORDS.contains(&name)
}

/// `notes_api.main` → (`notes_api.main`, `app`), `notes_api.main:api` →
/// (`notes_api.main`, `api`): a service's `app_module` as uvicorn reads it;
/// `None` unless every part is a Python identifier.
pub fn app_module_parts(text: &str) -> Option<(&str, &str)> {
    let (module, attribute) = text.split_once(':').unwrap_or((text, "app"));
    (module.split('.').all(is_identifier) && is_identifier(attribute)).then_some((module, attribute))
}

/// The name of the first top-level `def` in a prompt, if any.
fn first_def_name(prompt: &str) -> Option<String> {
    prompt.lines().find_map(|line| {
        let rest = line.strip_prefix("def ").or_else(|| line.strip_prefix("async def "))?;
        let name: String = rest
            .chars()
            .take_while(|c| *c == '_' || c.is_ascii_alphanumeric())
            .collect();
        is_identifier(&name).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_specs: 10,
        max_spec_bytes: 4096,
    };

    fn parse(v: Value) -> Result<BatchRequest, FieldError> {
        BatchRequest::from_value(v, LIMITS)
    }

    fn function() -> Value {
        json!({"kind": "function", "task_description": "add", "entry_point": "add",
               "test_cases": [{"input": [1, 2], "expected": 3}]})
    }

    fn service() -> Value {
        json!({"kind": "service", "service_name": "notes", "description": "notes",
               "endpoints": [{"method": "GET", "path": "/notes", "description": "list"}]})
    }

    #[test]
    fn an_expected_integer_of_any_size_keeps_every_digit_through_parsing_and_storage() {
        for digits in ["18446744073709551617", "15511210043330985984000000", &"9".repeat(4300)] {
            let body = format!(
                r#"{{"kind": "function", "task_description": "f", "entry_point": "f",
                    "test_cases": [{{"input": [{digits}], "expected": {digits}}}]}}"#
            );
            let mut value: Value = serde_json::from_str(&body).unwrap();
            canonical_numbers(&mut value).unwrap();
            let spec = Spec::from_value(value, "specs[0]").unwrap();
            // As stored (JSON) and read back by a worker.
            let stored = serde_json::to_value(&spec).unwrap();
            let read: Spec = serde_json::from_value(stored.clone()).unwrap();
            let read_text: Spec = serde_json::from_str(&stored.to_string()).unwrap();
            for spec in [&read, &read_text] {
                let Spec::Function(f) = spec else { panic!() };
                assert_eq!(f.test_cases[0].expected.to_string(), digits);
                assert_eq!(f.test_cases[0].input.to_string(), format!("[{digits}]"));
            }
        }
    }

    #[test]
    fn numbers_are_read_as_python_reads_them_and_refused_beyond_its_limits() {
        let mut value: Value =
            serde_json::from_str(r#"{"a": [1.50, 1e2, -0, 1e-400, 12345678901234567890123]}"#).unwrap();
        canonical_numbers(&mut value).unwrap();
        assert_eq!(value.to_string(), r#"{"a":[1.5,100.0,-0,0.0,12345678901234567890123]}"#);
        for (body, field) in [
            (r#"{"a": {"b": [1, 1e400]}}"#.to_owned(), "a.b[1]"),
            (format!(r#"{{"a": {}}}"#, "1".repeat(4301)), "a"),
            ("-1e309".to_owned(), "body"),
        ] {
            let mut value: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(canonical_numbers(&mut value).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn a_malformed_tagged_expected_value_is_refused_naming_its_path() {
        let mut spec = function();
        spec["test_cases"][0]["expected"] = json!([{"$sets": [1]}]);
        let e = parse(json!({"specs": [spec]})).unwrap_err();
        assert_eq!(e.field, "specs[0].test_cases[0].expected[0].$sets");
        assert!(e.message.contains("unknown tag"), "{e}");
        let mut spec = function();
        spec["test_cases"][0]["expected"] = json!({"$set": [1, 2], "extra": 1});
        assert!(parse(json!({"specs": [spec]})).is_ok(), "two keys: a plain dict");
    }

    fn err_field(v: Value) -> String {
        parse(v).unwrap_err().field
    }

    #[test]
    fn a_valid_batch_parses_with_default_options() {
        let b = parse(json!({"name": "x", "specs": [function(), service()]})).unwrap();
        assert_eq!(b.specs.len(), 2);
        assert_eq!(b.options.max_attempts, 3);
        assert_eq!(b.specs[1].kind(), SpecKind::Service);
    }

    #[test]
    fn a_batch_sets_its_model_request_parameters_within_the_bounds_of_their_settings() {
        let options = json!({
            "max_tokens": 500,
            "tokens_param": "max_completion_tokens",
            "temperature": "off",
            "extra_body": {"reasoning_effort": "high"},
        });
        let b = parse(json!({"specs": [function()], "options": options})).unwrap();
        assert_eq!(b.options.max_tokens, Some(500));
        assert_eq!(b.options.tokens_param, Some(TokensParam::MaxCompletionTokens));
        assert_eq!(b.options.temperature.map(Temperature::to_request), Some(None));
        assert_eq!(b.options.extra_body.unwrap()["reasoning_effort"], "high");
        let b = parse(json!({"specs": [function()], "options": {"temperature": 0.5}})).unwrap();
        assert_eq!(b.options.temperature.map(Temperature::to_request), Some(Some(0.5)));
        for (options, field, message) in [
            (
                json!({"max_tokens": 0}),
                "options.max_tokens",
                "must be between 1 and 1000000",
            ),
            (
                json!({"temperature": 2.5}),
                "options.temperature",
                "must be a number from 0 to 2",
            ),
            (
                json!({"extra_body": {"messages": []}}),
                "options.extra_body",
                "\"messages\" is set by Kiln",
            ),
            (
                json!({"tokens_param": "tokens"}),
                "options.tokens_param",
                "unknown variant",
            ),
            (
                json!({"temperature": "hot"}),
                "options.temperature",
                "\"hot\": expected a number from 0 to 2, or \"off\"",
            ),
        ] {
            let e = parse(json!({"specs": [function()], "options": options})).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.starts_with(message), "{e}");
        }
    }

    #[test]
    fn errors_name_the_offending_field() {
        let mut bad = service();
        bad["endpoints"][0]["method"] = json!("FETCH");
        assert_eq!(
            err_field(json!({"specs": [function(), function(), function(), bad]})),
            "specs[3].endpoints[0].method"
        );

        let mut bad = service();
        bad["endpoints"][0]["method"] = json!(7);
        assert_eq!(err_field(json!({"specs": [bad]})), "specs[0].endpoints[0].method");

        let mut bad = function();
        bad.as_object_mut().unwrap().remove("task_description");
        assert_eq!(err_field(json!({"specs": [bad]})), "specs[0].task_description");

        let mut bad = function();
        bad["tset_cases"] = json!([]);
        assert_eq!(err_field(json!({"specs": [bad]})), "specs[0].tset_cases");

        assert_eq!(err_field(json!({"specs": [{"kind": "lambda"}]})), "specs[0].kind");
        assert_eq!(
            err_field(json!({"specs": [{"task_description": "x"}]})),
            "specs[0].kind"
        );
        assert_eq!(err_field(json!({"specs": []})), "specs");
        assert_eq!(err_field(json!({"specs": {}})), "specs");
        assert_eq!(err_field(json!({})), "specs");
        assert_eq!(
            err_field(json!({"specs": [function()], "options": {"max_attempts": 0}})),
            "options.max_attempts"
        );
        assert_eq!(
            err_field(json!({"specs": [function()], "options": {"max_attempts": "3"}})),
            "options.max_attempts"
        );
        assert_eq!(err_field(json!({"specs": [function()], "optoins": {}})), "optoins");
        assert_eq!(
            err_field(json!({"specs": [function()], "options": {"examples": 6}})),
            "options.examples"
        );
        assert!(parse(json!({"specs": [function()], "options": {"examples": 5}})).is_ok());
        assert_eq!(
            err_field(json!({"specs": [function()], "options": {"candidates": 3}})),
            "options.candidates"
        );
        assert!(parse(json!({"specs": [function()], "options": {"candidates": 1}})).is_ok());
        for target in [
            "notes_api/main.py",
            "notes_api.main:",
            ".main",
            "notes-api.main",
            "a.b:c:d",
            "class.main",
        ] {
            let mut bad = service();
            bad["app_module"] = json!(target);
            assert_eq!(err_field(json!({"specs": [bad]})), "specs[0].app_module", "{target}");
        }
        for target in ["notes_api.main", "main", "notes_api.main:application"] {
            let mut good = service();
            good["app_module"] = json!(target);
            assert!(parse(json!({"specs": [good]})).is_ok(), "{target}");
        }
    }

    #[test]
    fn a_function_needs_tests_and_a_callable_entry_point() {
        let mut f = function();
        f.as_object_mut().unwrap().remove("test_cases");
        assert_eq!(err_field(json!({"specs": [f]})), "specs[0].test_cases");

        let mut f = function();
        f.as_object_mut().unwrap().remove("entry_point");
        assert_eq!(err_field(json!({"specs": [f.clone()]})), "specs[0].entry_point");
        f["prompt"] = json!("def add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n");
        let b = parse(json!({"specs": [f]})).unwrap();
        let Spec::Function(f) = &b.specs[0] else { panic!() };
        assert_eq!(f.entry_point.as_deref(), Some("add"));
    }

    #[test]
    fn too_many_or_too_large_specs_are_refused() {
        let specs: Vec<Value> = (0..11).map(|_| function()).collect();
        assert_eq!(err_field(json!({ "specs": specs })), "specs");
        let mut big = function();
        big["task_description"] = json!("x".repeat(5000));
        assert_eq!(err_field(json!({"specs": [big]})), "specs[0]");
    }

    #[test]
    fn the_spec_hash_ignores_key_order() {
        let a = Spec::from_value(
            json!({"kind": "function", "task_description": "t", "entry_point": "f", "test_code": "x"}),
            "s",
        )
        .unwrap();
        let b = Spec::from_value(
            json!({"test_code": "x", "entry_point": "f", "task_description": "t", "kind": "function"}),
            "s",
        )
        .unwrap();
        assert_eq!(a.sha256(), b.sha256());
    }

    #[test]
    fn the_model_ladder_escalates_and_then_stays_on_the_last_model() {
        let o = Options {
            models: vec!["cheap".into(), "strong".into()],
            ..Options::default()
        };
        assert_eq!(o.model_for_attempt(1), Some("cheap"));
        assert_eq!(o.model_for_attempt(2), Some("strong"));
        assert_eq!(o.model_for_attempt(5), Some("strong"));
    }
}
