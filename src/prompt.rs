//! The prompts: the system prompt with Kiln's production rules per spec kind,
//! the first user message rendering the spec, and the repair prompt that
//! feeds an attempt's failures back to the model.
//!
//! [`PROMPT_VERSION`] changes whenever the wording changes, because cached
//! results are keyed by it: a result produced by other instructions is not
//! the same result.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::llm::Message;
use crate::report::{Outcome, Severity, TestReport, ValidationReport};
use crate::spec::{FunctionSpec, ServiceSpec, Spec};
use crate::text;
use crate::values::{Py, Side};

/// Identifies the wording of every prompt below.
pub const PROMPT_VERSION: &str = "kiln-prompts-5";

/// Python packages (with pinned versions) the sandbox runtime provides, the
/// only ones generated services may depend on. Mirrors `sandbox/requirements.txt`.
pub const SANDBOX_PACKAGES: &str = include_str!("../sandbox/requirements.txt");

/// Most characters of feedback in one repair prompt.
pub const FEEDBACK_CAP: usize = 12_000;

/// Most characters of the previous answer repeated in a repair prompt.
const PREVIOUS_ANSWER_CAP: usize = 40_000;

const OUTPUT_FORMAT: &str = r#"Answer with one JSON object and nothing else:
{"files": [{"path": "<relative path>", "content": "<full file content>"}], "notes": "<optional short notes>"}
Every file is complete: no ellipses, no "rest unchanged"."#;

const FUNCTION_RULES: &str = r"You are Kiln's code generator. You write production-quality Python 3.11 functions.

Rules:
- Put the implementation in `solution.py`. Define the requested function at module level with exactly the requested name and parameters.
- Type hints on every parameter and return value; a docstring on every public function.
- Handle edge cases the task implies (empty inputs, zero, negative numbers, duplicates). Raise ValueError or TypeError with a clear message for invalid input instead of returning a wrong value.
- No placeholders: never `pass`, `...`, `TODO` or `NotImplementedError` standing in for logic.
- Standard library only. No network, no subprocesses, no reading or writing files, no `eval`, `exec` or dynamic imports.
- Deterministic: no randomness or time dependence unless the task asks for it. Do not print; return values.
- Do not include tests in `solution.py`.";

const SERVICE_RULES: &str = r#"You are Kiln's code generator. You write production-quality FastAPI microservices in Python 3.11.

Deliver these files:
- `app/__init__.py` and `app/main.py` defining `app = FastAPI(...)` (or the module the spec's "App module" names, defining the attribute it names); further modules in the same package as the design needs (models, schemas, storage, routers).
- Every endpoint of the spec, with exactly its HTTP method and path (path parameters in braces, e.g. `/items/{item_id}`).
- `GET /health` answering 200 with `{"status": "ok"}`.
- `tests/__init__.py` and `tests/test_*.py`: pytest tests using `fastapi.testclient.TestClient`, at least one test per endpoint (a test that requests the endpoint's path with its method), covering success and error cases. `conftest.py` may hold fixtures only: pytest hooks and `pytest_plugins` are refused, and ini settings (`pytest.ini`, `pyproject.toml`) are ignored when the tests run.
- Kiln also sends its own requests to every endpoint of a freshly started app (bodies generated from your request models, ids taken from what your endpoints return): every endpoint must answer a valid request with a 2xx, and never with a 5xx, also for an id that does not exist (answer 404). The sandbox has no network: when an external API cannot be reached, answer 502 or 503, not 500.
- `requirements.txt` listing only packages from the allowed list below, each pinned with `==` to the version shown (the sandbox runs exactly these versions).
- `Dockerfile` starting `FROM python:3.11-slim`, running as a non-root `USER`, with a `HEALTHCHECK` and a `CMD` that starts uvicorn on port 8000.
- `docker-compose.yml` defining the service.

Rules:
- Pydantic models for request and response bodies; type hints and docstrings on every function.
- Validate input and answer errors with the right status codes (400, 404, 409, 422) through `HTTPException`; never leak stack traces.
- Storage: SQLAlchemy with SQLite. Read the database URL from the `DATABASE_URL` environment variable, defaulting to an in-memory SQLite database (`sqlite://` with `StaticPool`), and create tables at start-up, so the app works with no setup. Tests must be independent of each other.
- Configuration from environment variables with safe defaults; no secrets in code.
- External APIs: call them through `httpx` behind a function the tests replace; tests never use the network.
- No placeholders: never `pass`, `...`, `TODO` or `NotImplementedError` standing in for logic.
- No `eval`, `exec`, `pickle`, `subprocess` or `os.system`."#;

/// The system message for a spec.
pub fn system_prompt(spec: &Spec) -> String {
    match spec {
        Spec::Function(_) => format!("{FUNCTION_RULES}\n\n{OUTPUT_FORMAT}"),
        Spec::Service(_) => format!(
            "{SERVICE_RULES}\n\nAllowed packages (requirements.txt may list only these, with these versions):\n{}\n{OUTPUT_FORMAT}",
            allowed_packages()
        ),
    }
}

/// The system message with worked examples (`options.examples`): past
/// tasks of the same kind and the answers that passed them, in the answer
/// format. In the system message, not as extra turns, so the conversation
/// stays one request and its repairs (see [`repair_messages`]).
pub fn system_prompt_with_examples(spec: &Spec, examples: &[(Spec, Vec<crate::files::File>)]) -> String {
    let mut out = system_prompt(spec);
    if examples.is_empty() {
        return out;
    }
    out.push_str(
        "\n\nExamples: earlier tasks of this kind and answers that passed all their checks. \
         Follow their format and standard; solve the task you are given, not these.",
    );
    for (i, (task, files)) in examples.iter().enumerate() {
        let answer = serde_json::json!({
            "files": files.iter().map(|f| serde_json::json!({"path": f.path, "content": f.content})).collect::<Vec<_>>()
        });
        let _ = write!(
            out,
            "\n\n### Example {n}: task\n{task}\n\n### Example {n}: answer\n{answer}",
            n = i + 1,
            task = spec_prompt(task),
        );
    }
    out
}

fn allowed_packages() -> String {
    let mut out = String::new();
    for line in SANDBOX_PACKAGES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let _ = writeln!(out, "- {line}");
    }
    out
}

/// The first user message: the spec, rendered for the model.
pub fn spec_prompt(spec: &Spec) -> String {
    match spec {
        Spec::Function(f) => function_prompt(f),
        Spec::Service(s) => service_prompt(s),
    }
}

/// Test cases shown to the model as examples; the rest stay unseen, so
/// passing them means the code works rather than memorises.
const EXAMPLES_SHOWN: usize = 5;

fn function_prompt(f: &FunctionSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Implement this Python function.\n\n## Task\n{}\n",
        f.task_description.trim()
    );
    if let Some(name) = &f.entry_point {
        let _ = writeln!(out, "## Function name\n`{name}`\n");
    }
    if let Some(prompt) = &f.prompt {
        let _ = writeln!(
            out,
            "## Signature and docstring to complete\n```python\n{}\n```\n",
            prompt.trim_end()
        );
    }
    if let Some(types) = &f.input_types {
        out.push_str("## Parameters\n");
        for (name, ty) in types {
            let _ = writeln!(out, "- `{name}`: `{ty}`");
        }
        out.push('\n');
    }
    if let Some(ty) = &f.output_type {
        let _ = writeln!(out, "## Returns\n`{ty}`\n");
    }
    if !f.constraints.is_empty() {
        out.push_str("## Constraints\n");
        for c in &f.constraints {
            let _ = writeln!(out, "- {c}");
        }
        out.push('\n');
    }
    if !f.test_cases.is_empty() {
        out.push_str("## Examples\n");
        for case in f.test_cases.iter().take(EXAMPLES_SHOWN) {
            let _ = writeln!(
                out,
                "- input `{}` → `{}`",
                serde_json::to_string(&case.input).unwrap_or_default(),
                // As a Python literal: a tagged JSON value (`{"$set": …}`)
                // would read to the model as a dict.
                Py::from_json(&case.expected, Side::Expected).map_or_else(
                    |_| serde_json::to_string(&case.expected).unwrap_or_default(),
                    |v| v.repr()
                )
            );
        }
        out.push_str(
            "\nAn object input means keyword arguments, an array means positional arguments, anything else one argument. \
             Results are shown as Python values and compared with `==`, of the same type (a tuple may stand for a list), \
             ints exactly, floats to 1e-9 relative.\n\n",
        );
    }
    if let Some(code) = &f.test_code {
        let _ = writeln!(
            out,
            "## Tests it must pass (pytest, importing your module as `solution`)\n```python\n{}\n```\n",
            clip(code.trim_end(), 8000)
        );
    }
    out.push_str("Return `solution.py` in the JSON format described.");
    out
}

fn service_prompt(s: &ServiceSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Build this FastAPI service.\n\n## Service\n`{}`: {}\n\n## Endpoints",
        s.service_name,
        s.description.trim()
    );
    for e in &s.endpoints {
        let _ = writeln!(out, "- `{} {}`: {}", e.method, e.path, e.description.trim());
    }
    if !s.database_tables.is_empty() {
        out.push_str("\n## Database tables\n");
        for t in &s.database_tables {
            let columns: Vec<String> = t
                .columns
                .iter()
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                .collect();
            let _ = writeln!(out, "- `{}`: {}", t.name, columns.join(", "));
        }
    }
    let extras = [
        (
            "External APIs",
            (!s.external_apis.is_empty()).then(|| serde_json::Value::from(s.external_apis.clone())),
        ),
        ("Authentication", s.authentication.clone()),
        ("Rate limiting", s.rate_limiting.clone()),
        ("Caching", s.caching.clone()),
    ];
    for (title, value) in extras {
        if let Some(v) = value {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let _ = writeln!(out, "\n## {title}\n{text}");
        }
    }
    if let Some(target) = &s.app_module {
        let _ = writeln!(
            out,
            "\n## App module\n`{target}` (uvicorn's `module:attribute`; the attribute is `app` when not named): put the FastAPI app there instead of `app/main.py`."
        );
    }
    out.push_str("\nReturn every file in the JSON format described.");
    out
}

/// What went wrong in an attempt, as the repair prompt reports it.
#[derive(Debug, Clone, Default)]
pub struct Failure<'a> {
    pub validation: Option<&'a ValidationReport>,
    pub tests: Option<&'a TestReport>,
    /// A failure that is neither (unparseable or truncated answer).
    pub other: Option<&'a str>,
}

/// The messages for attempt `n` (≥ 2): the original conversation, the
/// previous answer, and feedback listing what failed.
pub fn repair_messages(
    first: &[crate::llm::Message],
    previous_answer: &str,
    failure: &Failure<'_>,
    n: u32,
    max: u32,
) -> Vec<Message> {
    let mut messages: Vec<Message> = first.iter().take(2).cloned().collect();
    messages.push(Message::assistant(clip(previous_answer, PREVIOUS_ANSWER_CAP)));
    messages.push(Message::user(feedback(failure, n, max)));
    messages
}

/// The messages for attempt `n` after an answer that repeated an earlier
/// one: the original request alone, with `note` and the feedback appended,
/// and without the previous answer. Shown its own answer back, a small
/// model copies it (benches/real_model.rs measured half of all repairs);
/// asked afresh, it writes new code.
pub fn fresh_repair_messages(
    first: &[crate::llm::Message],
    note: &str,
    failure: &Failure<'_>,
    n: u32,
    max: u32,
) -> Vec<Message> {
    let mut messages: Vec<Message> = first.iter().take(2).cloned().collect();
    let feedback = feedback(failure, n, max);
    if messages.len() == 2 {
        let request = &mut messages[1];
        request.content = format!("{}\n\n{note}\n\n{feedback}", request.content);
    } else {
        messages.push(Message::user(format!("{note}\n\n{feedback}")));
    }
    messages
}

/// The repair feedback: every error diagnostic once (`file:line:col [rule]
/// message`), then warnings, then failing tests and output, within
/// [`FEEDBACK_CAP`] characters. Errors come first so that a cut drops the
/// least useful lines. Identical findings (same rule and message) share one
/// line listing each place, so a mistake repeated across files costs the
/// cap once.
pub fn feedback(failure: &Failure<'_>, n: u32, max: u32) -> String {
    /// Most places listed on one line before the rest are counted.
    const PLACES_SHOWN: usize = 12;
    /// Longest message kept whole.
    const MESSAGE_CAP: usize = 1500;
    let header = format!(
        "Attempt {n} of {max}. Your previous answer failed the checks below. \
         Fix every problem and answer again with the complete corrected files in the same JSON format.\n"
    );
    let mut lines: Vec<String> = Vec::new();
    if let Some(other) = failure.other {
        lines.push(format!("\nProblem with the answer: {other}"));
    }
    if let Some(v) = failure.validation {
        let mut sorted: Vec<_> = v.diagnostics.iter().filter(|d| d.severity != Severity::Info).collect();
        sorted.sort_by_key(|d| d.severity);
        // (severity, rule, message) → places, in order of first appearance.
        let mut groups: Vec<(Severity, &str, &str, Vec<String>)> = Vec::new();
        let mut index: std::collections::HashMap<(Severity, &str, &str), usize> = std::collections::HashMap::new();
        let mut seen = HashSet::new();
        for d in sorted {
            let key = (d.severity, d.rule.as_str(), d.message.trim());
            let place = d.location();
            if !seen.insert((key, place.clone())) {
                continue;
            }
            if let Some(&i) = index.get(&key) {
                groups[i].3.push(place);
            } else {
                index.insert(key, groups.len());
                groups.push((key.0, key.1, key.2, vec![place]));
            }
        }
        let mut title = None;
        for (severity, rule, message, places) in groups {
            if title != Some(severity) {
                lines.push(
                    if severity == Severity::Error {
                        "\nStatic checks:"
                    } else {
                        "\nWarnings (they do not fail the attempt, but fix them too):"
                    }
                    .into(),
                );
                title = Some(severity);
            }
            let mut shown = places.iter().take(PLACES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if places.len() > PLACES_SHOWN {
                let _ = write!(shown, " and {} more places", places.len() - PLACES_SHOWN);
            }
            lines.push(format!("- {shown} [{rule}] {}", clip(message, MESSAGE_CAP)));
        }
    }
    if let Some(t) = failure.tests {
        if let Some(problem) = &t.problem {
            lines.push(format!("\nTest run problem: {problem}"));
        }
        let mut failing: Vec<_> = t.cases.iter().filter(|c| c.outcome != Outcome::Passed).collect();
        // Kiln's own findings about a service's endpoints first: they are
        // what decides, and the cap must not cut them for the suite's.
        failing.sort_by_key(|c| !c.name.starts_with(crate::sandbox::harness::PROBE_CASE_PREFIX));
        if !failing.is_empty() {
            lines.push(format!("\nFailing tests ({} of {}):", t.failed, t.total));
            for c in failing {
                let message = clip(c.message.trim(), 1500);
                lines.push(format!("- {} ({}): {message}", c.name, c.outcome.as_str()));
            }
        }
        if !t.output.trim().is_empty() {
            lines.push(format!(
                "\nOutput of the run (last part):\n{}",
                tail(t.output.trim(), 3000)
            ));
        }
    }
    let mut out = header;
    let mut dropped = 0;
    for line in lines {
        // Leave room for the "… more" note.
        if out.len() + line.len() + 1 > FEEDBACK_CAP - 80 {
            dropped += 1;
            continue;
        }
        out.push_str(&line);
        out.push('\n');
    }
    if dropped > 0 {
        let _ = writeln!(out, "… and {dropped} more findings not shown.");
    }
    out
}

/// At most the first `max` bytes of `s`, telling the model how much was cut.
fn clip(s: &str, max: usize) -> String {
    let kept = text::head(s, max);
    if kept.len() == s.len() {
        return s.to_owned();
    }
    format!("{kept}\n… [{} more characters]", s.len() - kept.len())
}

/// At most the last `max` bytes of `s`, telling the model how much was cut.
fn tail(s: &str, max: usize) -> String {
    let kept = text::tail(s, max);
    if kept.len() == s.len() {
        return s.to_owned();
    }
    format!("[{} earlier characters] …\n{kept}", s.len() - kept.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Diagnostic, TestCaseResult};

    #[test]
    fn feedback_lists_each_error_once_with_its_location() {
        let d = Diagnostic::error("solution.py", 3, 5, "python-syntax", "invalid syntax");
        let v = ValidationReport::from_diagnostics(vec![
            d.clone(),
            d,
            Diagnostic::warning("solution.py", 1, 0, "docstring", "missing"),
        ]);
        let text = feedback(
            &Failure {
                validation: Some(&v),
                ..Failure::default()
            },
            2,
            3,
        );
        assert_eq!(
            text.matches("solution.py:3:5 [python-syntax] invalid syntax").count(),
            1,
            "{text}"
        );
        assert!(text.starts_with("Attempt 2 of 3."));
        let error_at = text.find("python-syntax").unwrap();
        let warning_at = text.find("docstring").unwrap();
        assert!(error_at < warning_at, "errors come before warnings");
    }

    #[test]
    fn identical_findings_in_many_places_share_one_line() {
        let message = "`requests` is not provided by the sandbox runtime";
        let v = ValidationReport::from_diagnostics(vec![
            Diagnostic::error("app/a.py", 1, 8, "import-not-allowed", message),
            Diagnostic::error("app/b.py", 3, 8, "import-not-allowed", message),
            Diagnostic::error("app/a.py", 1, 8, "import-not-allowed", message),
            Diagnostic::warning("app/c.py", 2, 1, "import-transitive", "list `anyio`"),
        ]);
        let text = feedback(
            &Failure {
                validation: Some(&v),
                ..Failure::default()
            },
            2,
            3,
        );
        assert_eq!(text.matches(message).count(), 1, "{text}");
        assert!(
            text.contains(&format!("- app/a.py:1:8, app/b.py:3:8 [import-not-allowed] {message}")),
            "{text}"
        );
        assert!(text.contains("Warnings (they do not fail the attempt"), "{text}");
    }

    #[test]
    fn feedback_stays_within_the_cap() {
        let diags = (0..2000)
            .map(|i| Diagnostic::error("app/main.py", i, 1, "rule", format!("problem number {i}")))
            .collect();
        let v = ValidationReport::from_diagnostics(diags);
        let t = TestReport::from_cases(
            vec![TestCaseResult {
                name: "test_x".into(),
                outcome: Outcome::Failed,
                message: "assert 1 == 2".into(),
            }],
            1,
            "x".repeat(50_000),
            None,
        );
        let text = feedback(
            &Failure {
                validation: Some(&v),
                tests: Some(&t),
                other: None,
            },
            2,
            3,
        );
        assert!(text.len() <= FEEDBACK_CAP, "{}", text.len());
        assert!(text.contains("more findings not shown"));
    }

    #[test]
    fn failing_tests_are_named_with_their_message() {
        let t = TestReport::from_cases(
            vec![
                TestCaseResult {
                    name: "case_0".into(),
                    outcome: Outcome::Passed,
                    message: String::new(),
                },
                TestCaseResult {
                    name: "case_1".into(),
                    outcome: Outcome::Failed,
                    message: "add(2, 2): expected 4, got 5".into(),
                },
            ],
            2,
            String::new(),
            None,
        );
        let text = feedback(
            &Failure {
                tests: Some(&t),
                ..Failure::default()
            },
            2,
            3,
        );
        assert!(text.contains("Failing tests (1 of 2):"), "{text}");
        assert!(
            text.contains("- case_1 (failed): add(2, 2): expected 4, got 5"),
            "{text}"
        );
        assert!(!text.contains("case_0"));
    }

    #[test]
    fn kilns_own_endpoint_findings_lead_the_failing_tests_and_survive_the_cap() {
        let suite = (0..40).map(|i| TestCaseResult {
            name: format!("tests: tests/test_notes.py::test_{i}"),
            outcome: Outcome::Failed,
            message: "assert 500 == 201\n".repeat(40),
        });
        let kiln = TestCaseResult {
            name: "kiln: POST /notes".into(),
            outcome: Outcome::Failed,
            message: "POST /notes with {\"title\": \"kiln\"} answered 500 (a server error): Internal Server Error"
                .into(),
        };
        let t = TestReport::from_cases(suite.chain([kiln]).collect(), 41, String::new(), None);
        let text = feedback(
            &Failure {
                tests: Some(&t),
                ..Failure::default()
            },
            2,
            3,
        );
        assert!(text.len() <= FEEDBACK_CAP, "{}", text.len());
        let first = text.find("- ").expect("a failing test is listed");
        assert!(
            text[first..].starts_with("- kiln: POST /notes (failed): POST /notes with"),
            "{text}"
        );
    }
}
