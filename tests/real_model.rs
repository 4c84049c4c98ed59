//! Kiln against a real model: SmolLM2-135M-Instruct served by
//! llama-cpp-python's OpenAI-compatible server (`scripts/ensure-model`),
//! through the whole system: a dispatcher, a worker process, real Postgres,
//! Redis and the process sandbox.
//!
//! What a small model writes is not predictable, so these tests assert what
//! must hold whatever it writes: every job ends; a failure carries the code
//! of what failed and its real cause; no worker dies; attempts are spent
//! only on the model's answers (no provider or sandbox fault, every attempt
//! has a stored answer). A setting the server rejects ends the jobs at once
//! with the server's complaint and the setting to change. Exact cases stay
//! with the scripted mock (`tests/pipeline.rs`, `tests/llm.rs`).

mod support;

#[path = "support/model.rs"]
mod model_server;

use std::process::Command;
use std::time::{Duration, Instant};

use model_server::{MODEL, ModelServer};
use serde_json::{Value, json};
use support::{Dispatcher, Proc, TestEnv, wait_for_batch};

/// Small, common tasks: one judged by pytest code that imports the
/// solution, one by test cases whose natural answer uses `typing`.
fn specs() -> Vec<Value> {
    vec![
        json!({"kind": "function", "task_description": "Return the string s reversed.",
               "entry_point": "reverse", "input_types": {"s": "str"}, "output_type": "str",
               "test_code": "from solution import reverse\n\ndef test_reverse():\n    assert reverse('abc') == 'cba'\n    assert reverse('') == ''\n"}),
        json!({"kind": "function", "task_description": "Return the even numbers of the list xs, in order.",
               "entry_point": "evens", "input_types": {"xs": "List[int]"}, "output_type": "List[int]",
               "test_cases": [{"input": [[1, 2, 3, 4]], "expected": [2, 4]}, {"input": [[]], "expected": []}]}),
    ]
}

/// The variables of a worker talking to `server` in `json_mode`.
fn worker_vars(env: &TestEnv, server: &ModelServer, json_mode: &str) -> Vec<(String, String)> {
    env.vars(
        &server.base_url,
        &[
            ("KILN_LLM_MODEL", MODEL),
            ("KILN_LLM_JSON_MODE", json_mode),
            // Small answers keep a CPU-only run short; a cut answer is the
            // model's failure (response-truncated), which is fine here.
            ("KILN_LLM_MAX_TOKENS", "256"),
            // A CPU-only server under load: with json_object the server
            // samples through a grammar in Python, and a repair prompt
            // took over 240 s on a machine shared with four builds. A
            // timeout is a provider fault, which these tests assert none of.
            ("KILN_LLM_TIMEOUT_S", "900"),
            // The server has one slot.
            ("KILN_LLM_MAX_IN_FLIGHT", "1"),
            ("KILN_WORKER_CONCURRENCY", "2"),
        ],
    )
}

/// Submits the specs, waits for the batch, and checks what must hold
/// whatever the model wrote. Returns the jobs.
async fn run_batch_and_check_every_outcome(json_mode: &str) -> Vec<Value> {
    let server = ModelServer::start().await;
    let env = TestEnv::new().await;
    let vars = worker_vars(&env, &server, json_mode);
    let d = Dispatcher::start(&env.settings(&server.base_url, &[])).await;
    let mut worker = Proc::spawn("kiln-worker", &vars);
    let started = Instant::now();
    let created = d
        .client
        .submit(&json!({"specs": specs(), "options": {"max_attempts": 2}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(1500)).await;
    eprintln!(
        "{json_mode}: batch ended in {:?}: {}",
        started.elapsed(),
        batch["counts"]
    );
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker died: {}",
        std::fs::read_to_string(&worker.1).unwrap_or_default()
    );

    let jobs = d.client.all_jobs(batch_id, None).await.unwrap();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        let id = job["job_id"].as_str().unwrap();
        let state = job["state"].as_str().unwrap();
        assert!(state == "succeeded" || state == "failed", "job {id} did not end: {job}");
        let attempts = d.attempts(id, true).await;
        for a in &attempts {
            // Only the model's answers spend attempts: no provider or
            // sandbox fault happened, and every attempt holds an answer.
            assert_eq!(a["llm_faults"], 0, "{a}");
            assert_eq!(a["sandbox_faults"], 0, "{a}");
            assert!(a["response"].is_string(), "an attempt without an answer: {a}");
            assert!(a["state"] == "passed" || a["state"] == "failed", "{a}");
            if a["state"] == "failed" {
                assert_real_cause(a);
            }
        }
        if state == "failed" {
            let error = &job["error"];
            let code = error["code"].as_str().unwrap();
            assert!(
                ["tests_failed", "validation_failed", "invalid_response"].contains(&code),
                "a failure of the model's answer carries another code: {job}"
            );
            let message = error["message"].as_str().unwrap();
            assert!(message.contains("first:") && message.len() > 40, "{job}");
            assert!(!message.contains("collected no tests"), "{job}");
            assert_eq!(attempts.len(), 2, "a failed job spent all its attempts: {job}");
        }
        eprintln!(
            "  {} {state} after {} attempts {}",
            job["label"],
            attempts.len(),
            job["error"]
        );
    }
    worker.terminate();
    d.stop().await;
    jobs
}

/// A failed attempt says why: an error diagnostic with a rule and a
/// message, or a test problem, or a failing case with its message; never
/// "collected no tests" for a solution that did not import.
fn assert_real_cause(attempt: &Value) {
    let diagnostics = attempt["validation"]["diagnostics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let errors: Vec<&Value> = diagnostics.iter().filter(|d| d["severity"] == "error").collect();
    if attempt["validation"]["ok"] == false {
        assert!(!errors.is_empty(), "failed validation without an error: {attempt}");
        for d in errors {
            assert!(d["rule"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
        }
        return;
    }
    let tests = &attempt["tests"];
    let problem = tests["problem"].as_str().unwrap_or("");
    assert!(!problem.contains("collected no tests"), "{attempt}");
    // A NameError is a static fact: validation reports undefined names,
    // except in a module whose names it cannot know (a star import, or
    // names made at run time).
    let response = attempt["response"].as_str().unwrap_or("");
    let judged = !["import *", "globals(", "locals(", "vars(", "exec("]
        .iter()
        .any(|dynamic| response.contains(dynamic));
    assert!(
        !judged
            || !(problem.contains("NameError") || tests["output"].as_str().unwrap_or("").contains("NameError: name")),
        "a NameError reached the sandbox: {attempt}"
    );
    let failing_case_says_why = tests["cases"].as_array().is_some_and(|cases| {
        cases
            .iter()
            .any(|c| c["outcome"] != "passed" && c["message"].as_str().is_some_and(|m| !m.is_empty()))
    });
    assert!(
        !problem.is_empty() || failing_case_says_why,
        "a failed attempt that does not say why: {attempt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_real_model_in_json_object_mode_every_job_ends_with_its_real_cause_and_no_fault() {
    run_batch_and_check_every_outcome("json_object").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_real_model_and_json_mode_off_every_job_ends_with_its_real_cause_and_no_fault() {
    run_batch_and_check_every_outcome("off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_mode_the_real_server_rejects_fails_every_job_at_once_naming_the_setting() {
    let server = ModelServer::start().await;
    let env = TestEnv::new().await;
    let vars = worker_vars(&env, &server, "json_schema");
    let d = Dispatcher::start(&env.settings(&server.base_url, &[])).await;
    let mut worker = Proc::spawn("kiln-worker", &vars);
    // Ten jobs, as an operator's first batch would be.
    let specs: Vec<Value> = specs().into_iter().cycle().take(10).collect();
    let created = d.client.submit(&json!({"specs": specs}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    // No retrying in silence, no breaker: the refusal is a setting's, and
    // the batch shows it within three minutes.
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(180)).await;
    assert_eq!(batch["counts"]["failed"], 10, "{batch}");
    for job in d.client.all_jobs(batch_id, None).await.unwrap() {
        let id = job["job_id"].as_str().unwrap();
        let job = d.client.job(id).await.unwrap();
        assert_eq!(job["error"]["code"], "llm_config", "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("the server rejects response_format json_schema (HTTP ")
                && message.ends_with("set KILN_LLM_JSON_MODE=json_object or off"),
            "{message}"
        );
        // The server's own complaint is shown.
        assert!(message.contains("json_object"), "{message}");
        let attempts = d.attempts(id, true).await;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0]["llm_faults"], 0, "the refusal was retried: {attempts:?}");
        assert!(attempts[0]["response"].is_null(), "{attempts:?}");
    }
    // The worker said so at start-up too, naming the setting.
    let log = std::fs::read_to_string(&worker.1).unwrap();
    assert!(
        log.contains("pre-flight check of the model failed") && log.contains("KILN_LLM_JSON_MODE"),
        "{log}"
    );
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker died");
    worker.terminate();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_worker_check_names_the_setting_the_real_server_rejects_and_passes_with_one_it_accepts() {
    let server = ModelServer::start().await;
    let env = TestEnv::new().await;
    let check = |json_mode: &str| {
        Command::new(support::bin("kiln-worker"))
            .arg("check")
            .envs(worker_vars(&env, &server, json_mode))
            .env("KILN_LOG", "error")
            .output()
            .unwrap()
    };

    let rejected = check("json_schema");
    let stdout = String::from_utf8_lossy(&rejected.stdout);
    assert_eq!(rejected.status.code(), Some(1), "{stdout}");
    let model_line = stdout.lines().find(|l| l.contains("model")).unwrap_or_default();
    assert!(
        model_line.starts_with("FAIL model")
            && model_line.contains("the server rejects response_format json_schema")
            && model_line.ends_with("set KILN_LLM_JSON_MODE=json_object or off"),
        "{stdout}"
    );
    // The other dependencies were checked and are fine.
    for name in ["postgres", "redis", "sandbox"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("ok   {name}"))),
            "{name} not reported fine: {stdout}"
        );
    }

    let accepted = check("json_object");
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(accepted.status.success(), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 4, "{stdout}");

    // A server that is not there is named by its setting too.
    let gone = Command::new(support::bin("kiln-worker"))
        .arg("check")
        .envs(env.vars("http://127.0.0.1:9/v1", &[("KILN_LLM_MODEL", MODEL)]))
        .env("KILN_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&gone.stdout);
    assert_eq!(gone.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("check KILN_LLM_BASE_URL"), "{stdout}");
}
