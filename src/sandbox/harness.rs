//! The harness protocol: what Kiln sends into a sandbox run and how it reads
//! the verdict back.
//!
//! The run executes `sandbox/harness.py` (embedded in this binary) with a
//! JSON request on stdin. The request carries a fresh random nonce; only a
//! `KILN-REPORT <nonce> <json>` line is believed, and the harness keeps the
//! nonce in a non-dumpable process the code under test never runs in. Test
//! case expectations never enter the sandbox: the harness returns what the
//! function returned and the comparison happens here.
//!
//! Classification: a run that never printed `KILN-READY` did not start (an
//! infrastructure fault, [`SandboxError`]); a run that started but left no
//! valid report was broken by the code under test (a failed attempt), and
//! so is one whose report is unreadable: once the code under test has run,
//! every doubt counts against it. The report is the last line of stdout;
//! when the code flooded the stream past the kept head, it is found in the
//! kept tail ([`RunOutput::stdout_tail`]).

use serde::Deserialize;
use serde_json::{Value, json};

use super::{RunLimits, RunOutput, Sandbox, SandboxError};
use crate::files::File;
use crate::report::{Outcome, TestCaseResult, TestReport};
use crate::spec::{FunctionSpec, ServiceSpec, Spec};
use crate::text;
use crate::values::{Py, Side};

/// The trusted checker, run inside every sandbox.
pub const HARNESS: &str = include_str!("../../sandbox/harness.py");

/// Most CPU seconds one call of the function under test may use. CPU, not
/// wall-clock, time: a verdict must not depend on how busy the machine is.
/// The run's wall clock stays the backstop.
const CALL_CPU_S: f64 = 10.0;

/// Names of the cases of Kiln's own requests to a service's endpoints
/// (`kiln: GET /notes/{note_id}`), made by the harness's trusted checker.
pub const PROBE_CASE_PREFIX: &str = "kiln: ";

/// The harness as the sandbox's Python is given it after `-c`: a one-line
/// bootstrap that inflates and runs [`HARNESS`], whose source is longer
/// than one argument may be. It runs as `<string>`, as the source itself
/// would under `-c`, and roles the harness starts again with `-c` get the
/// same bootstrap (the harness reads it back from its command line).
pub fn harness_source() -> &'static str {
    static SOURCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use std::io::Write as _;

        let mut packed = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        packed.write_all(HARNESS.as_bytes()).expect("compressing in memory");
        let packed = base64::engine::general_purpose::STANDARD.encode(packed.finish().expect("compressing in memory"));
        // The comment names the program in its command line, where the
        // source used to (the hostile suite recognises pid 1 by it).
        format!(
            "import base64,zlib;exec(compile(zlib.decompress(base64.b64decode('{packed}')).decode(),'<string>','exec'))  \
             # Kiln's sandbox harness (sandbox/harness.py, packed); it reports on a KILN-REPORT line"
        )
    });
    &SOURCE
}

/// Arguments that start the harness in the sandbox's Python.
pub fn harness_args() -> Vec<String> {
    vec!["-I".into(), "-B".into(), "-c".into(), harness_source().into()]
}

/// Runs the tests of `spec` against `files` in `sandbox`: [`request`],
/// the run, then [`judge`]. The pipeline calls the three apart, because the
/// first and last run inside the worker on what the model wrote and the run
/// is a wait on another process, and a worker's death is blamed on a job by
/// which of them it was in.
pub async fn run_tests(
    sandbox: &dyn Sandbox,
    spec: &Spec,
    files: &[File],
    limits: &RunLimits,
) -> Result<TestReport, SandboxError> {
    let request = request(spec, files, limits);
    let output = run(sandbox, &request, limits).await?;
    judge(spec, &request, &output, limits)
}

/// What one sandbox run is fed: the harness's input, with the nonce its
/// report must carry.
pub struct Request {
    nonce: String,
    /// The role the run starts with (see [`Sandbox::run_harness`]).
    hint: &'static str,
    stdin: Vec<u8>,
}

/// Builds the input of one run (a fresh nonce each time).
pub fn request(spec: &Spec, files: &[File], limits: &RunLimits) -> Request {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // The harness stops the code under test a little before the wall clock
    // so that it can still report why (a timeout of one call, say) rather
    // than being killed mid-run.
    let harness_timeout = limits.timeout.as_secs_f64() - (limits.timeout.as_secs_f64() / 10.0).min(1.5);
    let mut request = json!({
        "nonce": nonce,
        "files": files,
        "timeout_s": harness_timeout,
        "output_limit": limits.output_bytes,
    });
    match spec {
        Spec::Function(f) => {
            request["mode"] = "function".into();
            request["function"] = json!({
                "entry_point": f.entry_point,
                // Its complete helper functions are trusted: the tests get
                // them, not the solution's redefinitions.
                "prompt": f.prompt,
                "cases": f.test_cases.iter().map(|c| json!({"input": c.input})).collect::<Vec<_>>(),
                "test_code": f.test_code,
                "call_cpu_s": CALL_CPU_S.min(harness_timeout),
            });
        }
        Spec::Service(s) => {
            request["mode"] = "service".into();
            // Where the app is: validation has settled it (an answer it
            // cannot place does not reach the sandbox), Kiln's layout else.
            let app = crate::validate::layout::locate(s, files).ok();
            request["app"] = json!({
                "module": app.as_ref().map_or("app.main", |a| a.target.module.as_str()),
                "attribute": app.as_ref().map_or("app", |a| a.target.attribute.as_str()),
                "source_root": app.as_ref().and_then(|a| a.source_root),
            });
            request["endpoints"] = s
                .endpoints
                .iter()
                .map(|e| json!({"method": e.method, "path": e.path}))
                .collect::<Vec<_>>()
                .into();
            // What Kiln's own requests may meet without it being the code's
            // fault: credentials Kiln does not have, APIs the sandbox's
            // network cannot reach, a rate limit its requests run into.
            request["probe"] = json!({
                "authentication": requires(s.authentication.as_ref()),
                "external_apis": !s.external_apis.is_empty(),
                "rate_limiting": requires(s.rate_limiting.as_ref()),
            });
        }
    }
    // Which role the run starts with, so a warm backend can fork it ahead.
    let hint = match spec {
        Spec::Function(f) if !f.test_cases.is_empty() => "c",
        Spec::Function(f) if f.test_code.is_some() => "t",
        Spec::Service(_) => "s",
        Spec::Function(_) => "-",
    };
    Request {
        nonce,
        hint,
        stdin: serde_json::to_vec(&request).expect("requests serialise"),
    }
}

/// Whether a free-form spec requirement (`authentication`,
/// `rate_limiting`) asks for anything: absent, `null`, `false` and "none"-like strings do not.
fn requires(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::String(s)) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "none" | "no" | "false" | "n/a"
        ),
        Some(_) => true,
    }
}

/// Runs the harness on `request` in `sandbox` and returns what came out.
pub async fn run(sandbox: &dyn Sandbox, request: &Request, limits: &RunLimits) -> Result<RunOutput, SandboxError> {
    sandbox.run_harness(request.stdin.clone(), request.hint, limits).await
}

/// Reads the verdict out of a run's output: the authenticated report,
/// compared with what the spec expects. `Err` only when the run did not
/// start or the harness itself failed (infrastructure faults); whatever the
/// code under test did to the run is in the report.
pub fn judge(
    spec: &Spec,
    request: &Request,
    output: &RunOutput,
    limits: &RunLimits,
) -> Result<TestReport, SandboxError> {
    #[cfg(feature = "fault-injection")]
    crate::fault::while_reporting(output);
    let report = match read_report(output, &request.nonce, limits)? {
        Err(problem) => TestReport::from_cases(Vec::new(), 1, stderr_tail(output), Some(problem)),
        Ok(raw) => match spec {
            Spec::Function(f) => function_report(f, raw),
            Spec::Service(s) => service_report(s, raw),
        },
    };
    Ok(report)
}

/// Finds the authenticated report. `Err(SandboxError)`: the run did not
/// start; `Ok(Err(problem))`: it started and the code under test broke it.
fn read_report(output: &RunOutput, nonce: &str, limits: &RunLimits) -> Result<Result<Value, String>, SandboxError> {
    if output.stdout.split(|b| *b == b'\n').next() != Some(b"KILN-READY") {
        return Err(SandboxError::Unavailable(format!(
            "the sandbox did not start the harness (exit code {:?}, signal {:?}): {}",
            output.exit_code,
            output.signal,
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(1000)
                .collect::<String>()
        )));
    }
    let prefix = format!("KILN-REPORT {nonce} ");
    // The report is the last line. A tail shorter than the cap continues the
    // head without a gap; a full one may start mid-line after a gap, which a
    // newline keeps from joining what it cut.
    let mut stream = output.stdout.clone();
    if output.stdout_tail.len() >= limits.output_bytes {
        stream.push(b'\n');
    }
    stream.extend_from_slice(&output.stdout_tail);
    let stream = String::from_utf8_lossy(&stream);
    let report = stream.lines().rev().find_map(|l| l.strip_prefix(&prefix));
    let Some(report) = report else {
        let why = if output.timed_out {
            format!(
                "the run exceeded its {}s time limit and was killed",
                limits.timeout.as_secs()
            )
        } else if output.oom_killed {
            format!(
                "the run exceeded its {} MB memory limit and was killed",
                limits.memory_mb
            )
        } else if let Some(signal) = output.signal {
            format!("the run was killed by signal {signal} before reporting")
        } else {
            format!(
                "the run ended (exit code {:?}) before the harness could report",
                output.exit_code
            )
        };
        return Ok(Err(why));
    };
    let value: Value = match serde_json::from_str(report) {
        Ok(value) => value,
        Err(e) => return Ok(Err(format!("the harness's report was unreadable: {e}"))),
    };
    if let Some(error) = value.get("harness_error").and_then(Value::as_str) {
        return Err(SandboxError::Harness(error.to_owned()));
    }
    Ok(Ok(value))
}

#[derive(Deserialize)]
struct RawCase {
    name: String,
    /// `Some(Value::Null)` for a result of `None`; `None` when absent.
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    outcome: Option<Outcome>,
    #[serde(default)]
    message: String,
}

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawPytest {
    collected: Vec<String>,
    results: Vec<RawPytestResult>,
    /// Why the solution did not import in the tests' runner, if it did not.
    #[serde(default)]
    import_error: Option<String>,
}

#[derive(Deserialize)]
struct RawPytestResult {
    name: String,
    outcome: String,
    message: String,
    when: String,
}

#[derive(Deserialize)]
struct RawReport {
    #[serde(default)]
    cases: Vec<RawCase>,
    #[serde(default)]
    pytest: Option<RawPytest>,
    #[serde(default)]
    problem: Option<String>,
    #[serde(default)]
    output: String,
    /// Why the solution did not import for the test cases, if it did not.
    #[serde(default)]
    import_error: Option<String>,
}

/// The report of a solution that does not import: that is the cause,
/// stated once (the solution's own frames only), and no test ran. The
/// collection errors and per-case errors it caused, and pytest's output of
/// them (which shows the harness's proxy frames), would only repeat it and
/// blame the tests.
fn import_failure_report(spec: &FunctionSpec, import_error: &str) -> TestReport {
    let traceback = import_error
        .strip_prefix("importing solution failed:\n")
        .unwrap_or(import_error)
        .trim();
    let exception = traceback
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    // The innermost frame of the answer's own files: `File "/work/src/x.py", line 3`.
    let place = traceback.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("File \"")?;
        let (path, rest) = rest.split_once('"')?;
        let line = rest.strip_prefix(", line ")?.split(',').next()?;
        // The answer's files are under the sandbox's `/work/src/`.
        let (_, path) = path.rsplit_once("/work/src/")?;
        Some(format!("{path} line {line}"))
    });
    let summary = match place {
        Some(place) => format!("solution.py does not import: {exception} ({place})"),
        None => format!("solution.py does not import: {exception}"),
    };
    // The frames that lead there, without the exception line the summary
    // already states.
    let frames = traceback.strip_suffix(exception).unwrap_or(traceback).trim_end();
    let problem = if frames.is_empty() {
        summary
    } else {
        format!("{summary}\n{frames}")
    };
    let not_run = |name: String| TestCaseResult {
        name,
        outcome: Outcome::Error,
        message: "not run: solution.py does not import".into(),
    };
    let mut cases: Vec<TestCaseResult> = (0..spec.test_cases.len())
        .map(|i| not_run(format!("case_{i}")))
        .collect();
    if spec.test_code.is_some() {
        cases.push(not_run("test_code".into()));
    }
    let expected = cases.len().max(1);
    TestReport::from_cases(cases, expected, String::new(), Some(problem))
}

fn function_report(spec: &FunctionSpec, raw: Value) -> TestReport {
    let raw: RawReport = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return TestReport::from_cases(Vec::new(), 1, String::new(), Some(format!("unreadable report: {e}"))),
    };
    if let Some(import_error) = raw
        .import_error
        .as_deref()
        .or_else(|| raw.pytest.as_ref().and_then(|p| p.import_error.as_deref()))
    {
        return import_failure_report(spec, import_error);
    }
    let name = spec.entry_point.as_deref().unwrap_or("function");
    let mut cases = Vec::new();
    for (case, expected) in raw.cases.into_iter().zip(&spec.test_cases) {
        let call = format!("{name}({})", render_args(&expected.input));
        let (outcome, message) = match (case.value, case.error) {
            (_, Some(error)) => (Outcome::Error, format!("{call} raised {error}")),
            (Some(actual), None) if json_equal(&expected.expected, &actual) => (Outcome::Passed, String::new()),
            (Some(actual), None) => (
                Outcome::Failed,
                format!("{call}: {}", mismatch(&expected.expected, &actual)),
            ),
            (None, None) => (Outcome::Error, format!("{call}: no result")),
        };
        cases.push(TestCaseResult {
            name: case.name,
            outcome,
            message,
        });
    }
    let mut expected_count = spec.test_cases.len();
    let mut problem = raw.problem;
    if let Some(pytest) = raw.pytest {
        // Every collected test must have a call-phase result.
        let ran = pytest.results.iter().filter(|r| r.when == "call").count();
        expected_count += pytest.collected.len().max(ran).max(1);
        if pytest.collected.is_empty() && problem.is_none() {
            problem = Some("test_code: pytest collected no tests".into());
        }
        for r in pytest.results {
            let outcome = match r.outcome.as_str() {
                "passed" => Outcome::Passed,
                "skipped" => Outcome::Skipped,
                "failed" if r.when == "call" => Outcome::Failed,
                _ => Outcome::Error,
            };
            // Setup/teardown errors of a test that also has a call result
            // would count it twice; keep them only when the call never ran.
            cases.push(TestCaseResult {
                name: r.name,
                outcome,
                message: r.message,
            });
        }
    } else if spec.test_code.is_some() && problem.is_none() {
        problem = Some("test_code: the pytest run produced no results".into());
    }
    TestReport::from_cases(dedupe_by_name(cases), expected_count, raw.output, problem)
}

fn service_report(_spec: &ServiceSpec, raw: Value) -> TestReport {
    let raw: RawReport = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return TestReport::from_cases(Vec::new(), 1, String::new(), Some(format!("unreadable report: {e}"))),
    };
    let cases: Vec<TestCaseResult> = raw
        .cases
        .into_iter()
        .map(|c| TestCaseResult {
            name: c.name,
            outcome: c.outcome.unwrap_or(Outcome::Error),
            message: c.message,
        })
        .collect();
    let expected = cases.len().max(1);
    TestReport::from_cases(dedupe_by_name(cases), expected, raw.output, raw.problem)
}

/// One entry per test name, keeping the worst outcome (a test that passed
/// its call but errored in teardown did not pass).
fn dedupe_by_name(cases: Vec<TestCaseResult>) -> Vec<TestCaseResult> {
    let mut out: Vec<TestCaseResult> = Vec::with_capacity(cases.len());
    for case in cases {
        match out.iter_mut().find(|c| c.name == case.name) {
            Some(existing) if existing.outcome == Outcome::Passed => *existing = case,
            Some(_) => {}
            None => out.push(case),
        }
    }
    out
}

/// Compares a spec's expected value with a result as the harness reported
/// it, both decoded as Python values ([`values`](super::values): ints
/// exactly, floats to 1e-9 relative, every other type only with its own
/// kind). An expected value that does not decode (the API refuses those)
/// equals nothing.
pub fn json_equal(expected: &Value, actual: &Value) -> bool {
    match (
        Py::from_json(expected, Side::Expected),
        Py::from_json(actual, Side::Result),
    ) {
        (Ok(e), Ok(a)) => e.equals(&a),
        _ => false,
    }
}

/// "expected X, got Y" in Python's notation, naming both types when they
/// differ (a set and a list can print alike to a reader in a hurry).
fn mismatch(expected: &Value, actual: &Value) -> String {
    match (
        Py::from_json(expected, Side::Expected),
        Py::from_json(actual, Side::Result),
    ) {
        (Ok(e), Ok(a)) if e.type_name() == a.type_name() => {
            format!(
                "expected {}, got {}",
                text::clip(&e.repr(), SHOWN),
                text::clip(&a.repr(), SHOWN)
            )
        }
        (Ok(e), Ok(a)) => format!(
            "expected {} {}, got {} {}",
            e.type_name(),
            text::clip(&e.repr(), SHOWN),
            a.type_name(),
            text::clip(&a.repr(), SHOWN)
        ),
        _ => format!("expected {}, got {}", short(expected), short(actual)),
    }
}

/// How much of a value a failure message repeats.
const SHOWN: usize = 300;

fn render_args(input: &Value) -> String {
    match input {
        Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", short(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => short(other),
    }
}

fn short(v: &Value) -> String {
    text::clip(&v.to_string(), SHOWN)
}

fn stderr_tail(output: &RunOutput) -> String {
    text::tail(&String::from_utf8_lossy(&output.stderr), 4000).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value_and_tuples_as_lists() {
        assert!(json_equal(&json!(3), &json!(3.0)));
        assert!(json_equal(&json!([1, [2, 3]]), &json!([1.0, [2, 3]])));
        assert!(json_equal(&json!(0.1 + 0.2), &json!(0.3)));
        assert!(!json_equal(&json!(1), &json!(true)));
        assert!(!json_equal(&json!([1, 2]), &json!([2, 1])));
        assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    /// JSON text as the API and the harness's report carry it.
    fn text(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn integers_beyond_64_bits_are_compared_digit_for_digit() {
        let f25 = text("15511210043330985984000000");
        assert!(json_equal(&f25, &text("15511210043330985984000000")));
        assert!(
            !json_equal(&f25, &text("15511210044318640305000000")),
            "25! + 987654321"
        );
        for (expected, actual) in [
            ("9223372036854775807", "9223372036854775808"),
            ("9223372036854775808", "9223372036854775809"),
            ("18446744073709551615", "18446744073709551616"),
            ("18446744073709551616", "18446744073709551617"),
            ("-9223372036854775809", "-9223372036854775810"),
        ] {
            assert!(!json_equal(&text(expected), &text(actual)), "{expected} == {actual}");
            assert!(json_equal(&text(expected), &text(expected)), "{expected}");
        }
        // Nested, and with every digit in the message.
        assert!(!json_equal(
            &text("[[18446744073709551616]]"),
            &text("[[18446744073709551617]]")
        ));
        assert_eq!(
            mismatch(&f25, &text("15511210044318640305000000")),
            "expected 15511210043330985984000000, got 15511210044318640305000000"
        );
    }

    #[test]
    fn values_of_another_type_are_not_equal_and_the_message_names_both_types() {
        assert!(!json_equal(&text(r#"{"$set": [1, 2]}"#), &text("[1, 2]")));
        assert!(!json_equal(&text(r#""nan""#), &text(r#"{"$float": "nan"}"#)));
        assert!(json_equal(&text(r#"{"$float": "nan"}"#), &text(r#"{"$float": "nan"}"#)));
        assert!(!json_equal(&text(r#""abc""#), &text(r#"{"$bytes": "616263"}"#)));
        assert!(!json_equal(&text(r#"{"1": "a"}"#), &text(r#"{"$dict": [[1, "a"]]}"#)));
        assert_eq!(
            mismatch(&text(r#"{"$set": [1, 2]}"#), &text("[1, 2]")),
            "expected set {1, 2}, got list [1, 2]"
        );
        assert!(
            !json_equal(&text(r#"{"$sets": [1]}"#), &text(r#"{"$sets": [1]}"#)),
            "a malformed expected value equals nothing"
        );
    }

    fn output(stdout: &str) -> RunOutput {
        RunOutput {
            stdout: stdout.as_bytes().to_vec(),
            exit_code: Some(0),
            ..RunOutput::default()
        }
    }

    fn limits() -> RunLimits {
        RunLimits {
            timeout: std::time::Duration::from_secs(5),
            memory_mb: 256,
            pids: 64,
            tmpfs_mb: 16,
            output_bytes: 4096,
        }
    }

    #[test]
    fn the_harness_fits_in_one_command_line_argument_with_room_to_grow() {
        /// Most bytes one command-line argument may have (Linux's MAX_ARG_STRLEN).
        const MAX_ARGUMENT: usize = 128 * 1024;
        // The source alone no longer would (a run then fails with E2BIG).
        assert!(harness_source().len() * 2 < MAX_ARGUMENT, "{}", harness_source().len());
        assert!(harness_source().is_ascii() && !harness_source().contains('\n'));
    }

    #[test]
    fn only_a_stated_authentication_requirement_lets_probes_accept_401() {
        for v in [json!("API key in X-API-Key"), json!({"type": "bearer"}), json!(true)] {
            assert!(requires(Some(&v)), "{v}");
        }
        for v in [json!(null), json!(false), json!("none"), json!(" None "), json!("")] {
            assert!(!requires(Some(&v)), "{v}");
        }
        assert!(!requires(None));
    }

    #[test]
    fn a_report_without_the_nonce_is_not_believed() {
        let forged = output("KILN-READY\nKILN-REPORT 0000 {\"cases\": []}\n");
        let verdict = read_report(&forged, "the-real-nonce", &limits()).unwrap();
        assert!(verdict.is_err(), "a forged report must not be read");
    }

    #[test]
    fn a_run_that_never_started_is_an_infrastructure_fault() {
        let e = read_report(&output("bwrap: no permissions\n"), "n", &limits()).unwrap_err();
        assert!(matches!(e, SandboxError::Unavailable(_)));
    }

    #[test]
    fn a_timed_out_run_is_the_codes_failure() {
        let mut out = output("KILN-READY\n");
        out.timed_out = true;
        let problem = read_report(&out, "n", &limits()).unwrap().unwrap_err();
        assert!(problem.contains("time limit"), "{problem}");
    }
}
