//! Hostile model answers: code nested deep enough to overflow any stack,
//! NUL characters in text, paths and output, and a seeded fuzz of answers
//! served by the mock LLM to a live worker process. Whatever the model
//! says, the worker survives and the job ends as the model's failure (or a
//! pass), never as a storage retry loop or a dead worker.

mod support;

use std::time::Duration;

use kiln::spec::Spec;
use serde_json::{Value, json};
use support::{Dispatcher, Proc, TestEnv, wait_for_batch};

fn function_spec(entry: &str) -> Spec {
    serde_json::from_value(json!({
        "kind": "function",
        "task_description": "Return one.",
        "entry_point": entry,
        "test_cases": [{"input": [], "expected": 1}]
    }))
    .unwrap()
}

/// `solution.py` in Kiln's JSON answer format.
fn answer(path: &str, content: &str) -> String {
    json!({"files": [{"path": path, "content": content}]}).to_string()
}

/// The nesting attacks of the adversarial review, each a valid file within
/// the size limit.
fn deep_sources() -> Vec<(&'static str, String)> {
    vec![
        ("chained additions", format!("x = {}1\n", "1+".repeat(200_000))),
        (
            "nested lists",
            format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        (
            "nested calls",
            format!("x = {}1{}\n", "f(".repeat(100_000), ")".repeat(100_000)),
        ),
        (
            "nested subscripts",
            format!("x = {}1{}\n", "a[".repeat(100_000), "]".repeat(100_000)),
        ),
        ("nested nots", format!("x = {}1\n", "not ".repeat(100_000))),
        ("nested lambdas", format!("x = {}1\n", "lambda:".repeat(70_000))),
        // Over the file size limit: refused unparsed.
        (
            "100,000 nested lambdas",
            format!("x = {}1\n", "lambda:".repeat(100_000)),
        ),
        ("an attribute chain", format!("x = a{}\n", ".b".repeat(80_000))),
    ]
}

#[tokio::test]
async fn deeply_nested_answers_are_a_nesting_diagnostic_not_a_stack_overflow() {
    let spec = function_spec("one");
    for (what, source) in deep_sources() {
        let content = format!("def one() -> int:\n    return 1\n\n{source}");
        let (files, report) = kiln::pipeline::check_answer(&spec, &answer("solution.py", &content), Some("stop"))
            .await
            .unwrap();
        assert_eq!(files.len(), 1, "{what}");
        assert!(!report.ok, "{what}");
        let (rule, line) = if content.len() > kiln::validate::paths::MAX_FILE_BYTES {
            ("path-size", 0)
        } else {
            ("python-nesting", 4)
        };
        let d = report
            .diagnostics
            .iter()
            .find(|d| d.rule == rule)
            .unwrap_or_else(|| panic!("{what}: {:?}", report.diagnostics));
        assert_eq!((d.file.as_str(), d.line), ("solution.py", line), "{what}");
    }
}

#[tokio::test]
async fn nesting_within_what_python_compiles_is_not_flagged() {
    let content = format!(
        "def one() -> int:\n    \"\"\"One.\"\"\"\n    return {}1{}\n",
        "(".repeat(150),
        ")".repeat(150)
    );
    let sum = format!(
        "def one() -> int:\n    \"\"\"One.\"\"\"\n    return 1{}\n",
        "+0".repeat(900)
    );
    for source in [content, sum] {
        let (_, report) = kiln::pipeline::check_answer(&function_spec("one"), &answer("solution.py", &source), None)
            .await
            .unwrap();
        assert!(report.ok, "{:?}", report.diagnostics);
    }
}

/// A mock script answering `{entry}` specs with `content`, every attempt.
fn script(entry: &str, content: &str) -> kiln::mock_llm::ScriptFile {
    serde_json::from_value(json!({
        "name": entry,
        "match": format!("`{entry}`"),
        "responses": [{"content": content}],
    }))
    .unwrap()
}

async fn mock_of(scripts: Vec<kiln::mock_llm::ScriptFile>) -> kiln::mock_llm::MockServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    kiln::mock_llm::MockServer::start(listener, scripts).expect("mock starts")
}

fn spec_json(entry: &str) -> Value {
    json!({"kind": "function", "task_description": format!("Return one (`{entry}`)."),
           "entry_point": entry, "test_cases": [{"input": [], "expected": 1}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_survives_deeply_nested_answers_and_fails_them_as_the_models() {
    let env = TestEnv::new().await;
    let sources = deep_sources();
    let scripts = sources
        .iter()
        .enumerate()
        .map(|(i, (_, source))| {
            let entry = format!("deep_{i}");
            let content = format!("def {entry}() -> int:\n    return 1\n\n{source}");
            script(&entry, &answer("solution.py", &content))
        })
        .collect();
    let llm = mock_of(scripts).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut worker = Proc::spawn("kiln-worker", &env.vars(&llm.base_url(), &[("KILN_WORKER_ID", "deep")]));
    let specs: Vec<Value> = (0..sources.len()).map(|i| spec_json(&format!("deep_{i}"))).collect();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(batch["counts"]["failed"], sources.len(), "{batch}");
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker died");
    let (crashes, codes): (i64, Vec<String>) =
        sqlx::query_as("SELECT coalesce(sum(crashes), 0)::int8, array_agg(DISTINCT error_code) FROM jobs")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((crashes, codes), (0, vec!["validation_failed".to_owned()]));
    let rules: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT d->>'rule' FROM attempts, jsonb_array_elements(validation->'diagnostics') d \
         WHERE d->>'severity' = 'error' ORDER BY 1",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(rules, vec!["path-size".to_owned(), "python-nesting".to_owned()]);
    d.stop().await;
}
