//! End to end through the real parts: HTTP API → Postgres → feeder → Redis →
//! worker (lease, pipeline) → mock LLM over HTTP → bubblewrap sandbox.

mod support;

use std::time::Duration;

use kiln::queue::Producer;
use serde_json::{Value, json};
use support::{Dispatcher, InProcessWorker, TestEnv, add_spec, demo_mock, mock, wait_for_batch};

const REPAIR_SCRIPT: &str = r#"
- name: clamp
  match: "`clamp`"
  responses:
    - files:
        - path: solution.py
          content: "def clamp(x: int, lo: int, hi: int) -> int:\n    \"\"\"Clamp x.\"\"\"\n    return max(lo, x)\n"
    - files:
        - path: solution.py
          content: "def clamp(x: int, lo: int, hi: int) -> int:\n    \"\"\"Clamp x into [lo, hi].\"\"\"\n    return max(lo, min(x, hi))\n"
- name: broken
  match: "`broken`"
  responses:
    - files:
        - path: solution.py
          content: "def broken(x: int) -> int:\n    return x +\n"
    - files:
        - path: solution.py
          content: "def broken(x: int) -> int:\n    \"\"\"Double x.\"\"\"\n    return x * 2\n"
- name: never
  match: "`never_right`"
  responses:
    - files:
        - path: solution.py
          content: "def never_right(x: int) -> int:\n    \"\"\"Wrong on purpose.\"\"\"\n    return -1\n"
"#;

fn clamp_spec() -> Value {
    json!({"kind": "function", "task_description": "Clamp x into [lo, hi].", "entry_point": "clamp",
           "test_cases": [{"input": [5, 0, 10], "expected": 5}, {"input": [50, 0, 10], "expected": 10},
                          {"input": {"x": -3, "lo": 0, "hi": 10}, "expected": 0}]})
}

#[tokio::test]
async fn a_failing_first_answer_is_repaired_and_the_attempts_show_why() {
    let env = TestEnv::new().await;
    let llm = mock(REPAIR_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;

    let created = d.client.submit(&json!({"specs": [clamp_spec()]}), None).await.unwrap();
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert!(batch["usage"]["prompt_tokens"].as_i64().unwrap() > 0);

    let job_id = created["job_ids"][0].as_str().unwrap();
    let a = d.attempts(job_id, true).await;
    assert_eq!(a.len(), 2, "{a:#?}");
    assert_eq!((a[0]["n"].as_i64(), a[0]["state"].as_str()), (Some(1), Some("failed")));
    assert_eq!(a[0]["validation"]["ok"], true);
    assert_eq!(a[0]["tests"]["failed"], 1);
    let failing = a[0]["tests"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["outcome"] == "failed")
        .unwrap();
    assert_eq!(failing["message"], "clamp(50, 0, 10): expected 10, got 50");
    assert_eq!((a[1]["n"].as_i64(), a[1]["state"].as_str()), (Some(2), Some("passed")));
    assert_eq!(a[1]["tests"]["passed"], 3);
    // The repair prompt told the model exactly what failed.
    let repair = a[1]["prompt"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(repair.starts_with("Attempt 2 of 3."), "{repair}");
    assert!(repair.contains("clamp(50, 0, 10): expected 10, got 50"), "{repair}");

    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["result"]["attempt"], 2);
    assert_eq!(job["result"]["files"][0]["path"], "solution.py");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn an_answer_with_a_syntax_error_fails_validation_with_its_position_before_the_sandbox() {
    let env = TestEnv::new().await;
    let llm = mock(REPAIR_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let spec = json!({"kind": "function", "task_description": "Double x.", "entry_point": "broken",
                      "test_cases": [{"input": 2, "expected": 4}]});
    let created = d.client.submit(&json!({ "specs": [spec] }), None).await.unwrap();
    wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let a = d.attempts(created["job_ids"][0].as_str().unwrap(), false).await;
    assert_eq!(a[0]["state"], "failed");
    assert_eq!(a[0]["validation"]["ok"], false);
    let d0 = &a[0]["validation"]["diagnostics"][0];
    assert_eq!(
        (d0["file"].as_str(), d0["line"].as_i64(), d0["rule"].as_str()),
        (Some("solution.py"), Some(2), Some("python-syntax"))
    );
    assert!(a[0]["tests"].is_null(), "no sandbox run for invalid code");
    assert_eq!(a[1]["state"], "passed");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn the_same_job_message_delivered_twice_runs_the_pipeline_once() {
    let env = TestEnv::new().await;
    let llm = mock(support::ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let created = d.client.submit(&json!({"specs": [add_spec(7)]}), None).await.unwrap();
    let job_id: uuid::Uuid = created["job_ids"][0].as_str().unwrap().parse().unwrap();
    // The feeder sends one message; send the same message twice more.
    let producer = Producer::connect(&support::redis_url(), &env.queue).await.unwrap();
    producer.push(&[job_id, job_id]).await.unwrap();
    let w = InProcessWorker::start(&settings).await;
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 1);
    // Give the duplicates time to be delivered and refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(llm.requests().len(), 1, "one model request for one job");
    assert_eq!(env.count("attempts").await, 1);
    let job = d.client.job(&job_id.to_string()).await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["run"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn retrying_a_failed_job_starts_run_2_with_a_fresh_budget_and_keeps_run_1() {
    let env = TestEnv::new().await;
    let llm = mock(REPAIR_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let spec = json!({"kind": "function", "task_description": "x", "entry_point": "never_right",
                      "test_cases": [{"input": 1, "expected": 1}]});
    let created = d
        .client
        .submit(&json!({"specs": [spec], "options": {"max_attempts": 2}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["state"], "failed");
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(job["error"]["code"], "tests_failed", "{job}");
    assert_eq!(job["attempts"], 2);

    let retried = d.client.retry_job(job_id).await.unwrap();
    assert_eq!(retried["requeued"], 1);
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (job["run"].as_i64(), job["attempts"].as_i64()),
        (Some(2), Some(0)),
        "fresh budget: {job}"
    );
    assert!(job["error"].is_null());
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;

    let a = d.attempts(job_id, false).await;
    let runs: Vec<(i64, i64, &str)> = a
        .iter()
        .map(|x| {
            (
                x["run"].as_i64().unwrap(),
                x["n"].as_i64().unwrap(),
                x["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [(1, 1, "failed"), (1, 2, "failed"), (2, 1, "failed"), (2, 2, "failed")]
    );

    // A job that is not failed or cancelled cannot be retried.
    let ok = d.client.submit(&json!({"specs": [clamp_spec()]}), None).await.unwrap();
    wait_for_batch(&d.client, ok["batch_id"].as_str().unwrap(), Duration::from_secs(60)).await;
    let err = d
        .client
        .retry_job(ok["job_ids"][0].as_str().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_service_job_passes_on_routes_health_and_its_own_tests_and_its_files_download() {
    let env = TestEnv::new().await;
    let llm = demo_mock().await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let batch = kiln::client::load_batch(std::path::Path::new("examples/specs/services.yaml")).unwrap();
    let created = d.client.submit(&batch, None).await.unwrap();
    let status = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status["counts"]["succeeded"], 2, "{status}");

    let notes = created["job_ids"][0].as_str().unwrap();
    let a = d.attempts(notes, false).await;
    let names: Vec<&str> = a[0]["tests"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        "import app.main",
        "route GET /notes",
        "route DELETE /notes/{note_id}",
        "GET /health",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("tests: tests/test_notes.py::")),
        "{names:?}"
    );

    // The link shortener's first answer had a syntax error at a known place.
    let links = created["job_ids"][1].as_str().unwrap();
    let a = d.attempts(links, false).await;
    assert_eq!(a[0]["validation"]["diagnostics"][0]["file"], "app/main.py");
    assert_eq!(a[1]["state"], "passed");

    let dir = std::env::temp_dir().join(format!("kiln-download-{}", uuid::Uuid::new_v4()));
    let files = d.client.download(notes, &dir).await.unwrap();
    assert!(files.iter().any(|f| f.ends_with("app/main.py")));
    let main = std::fs::read_to_string(dir.join("app/main.py")).unwrap();
    assert!(main.contains("app = FastAPI("));
    std::fs::remove_dir_all(&dir).unwrap();
    let one = reqwest::get(format!("{}/v1/jobs/{notes}/files/requirements.txt", d.url))
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert!(one.text().await.unwrap().contains("fastapi=="));
    w.stop().await;
    d.stop().await;
}

/// The other sandbox backend, wired as operators configure it
/// (`KILN_SANDBOX=docker`): the demo's whole batch — services, functions and
/// the answers that need a repair — passes in containers, and a stopped
/// worker leaves none of its containers behind.
#[tokio::test]
async fn a_worker_on_the_docker_sandbox_runs_the_demo_batch_to_success_and_leaves_no_containers() {
    let env = TestEnv::new().await;
    let llm = demo_mock().await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_SANDBOX", "docker"), ("KILN_WORKER_CONCURRENCY", "4")],
    );
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let batch = kiln::client::load_batch(std::path::Path::new("examples/specs")).unwrap();
    let created = d.client.submit(&batch, None).await.unwrap();
    let status = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(status["counts"]["succeeded"], status["total"], "{status}");
    let mut repaired = 0;
    for job in created["job_ids"].as_array().unwrap() {
        let a = d.attempts(job.as_str().unwrap(), false).await;
        if a.len() == 2 {
            assert_eq!(
                (a[0]["state"].as_str(), a[1]["state"].as_str()),
                (Some("failed"), Some("passed"))
            );
            repaired += 1;
        }
    }
    assert!(repaired >= 2, "the demo's repairs did not happen: {repaired}");
    w.stop().await;
    d.stop().await;

    let docker = bollard::Docker::connect_with_socket_defaults().unwrap();
    let filters = std::collections::HashMap::from([("label".to_owned(), vec!["org.kiln.sandbox.owner".to_owned()])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let ours = format!(":{}:", std::process::id());
    let left: Vec<String> = docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("org.kiln.sandbox.owner"))
                .is_some_and(|owner| owner.contains(&ours))
        })
        .filter_map(|c| c.id)
        .collect();
    assert!(left.is_empty(), "the stopped worker left containers: {left:?}");
}

/// The system message of a job's first attempt.
async fn first_system_prompt(d: &Dispatcher, job_id: &str) -> String {
    let a = d.attempts(job_id, true).await;
    a[0]["prompt"][0]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_batch_with_examples_shows_the_model_past_successes_of_other_specs_never_its_own() {
    let env = TestEnv::new().await;
    let llm = mock(&format!(
        "{REPAIR_SCRIPT}{}",
        support::ADD_SCRIPT.trim_start_matches('\n')
    ))
    .await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let run = |body: Value| {
        let d = &d;
        async move {
            let created = d.client.submit(&body, None).await.unwrap();
            let batch = wait_for_batch(
                &d.client,
                created["batch_id"].as_str().unwrap(),
                Duration::from_secs(60),
            )
            .await;
            assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
            created["job_ids"][0].as_str().unwrap().to_owned()
        }
    };
    // clamp passes at its second attempt: its passing answer is the one shown.
    let clamp = run(json!({"specs": [clamp_spec()]})).await;
    assert!(
        !first_system_prompt(&d, &clamp).await.contains("### Example"),
        "no examples unless asked"
    );

    let add = run(json!({"specs": [add_spec(3)], "options": {"examples": 2}})).await;
    let shown = first_system_prompt(&d, &add).await;
    assert!(shown.contains("### Example 1: task"), "{shown}");
    assert!(
        shown.contains("Clamp x into [lo, hi]."),
        "the past task is shown: {shown}"
    );
    assert!(
        shown.contains("return max(lo, min(x, hi))"),
        "its passing answer is shown: {shown}"
    );
    assert!(
        !shown.contains("return max(lo, x)\\n"),
        "never a failed answer: {shown}"
    );
    assert!(
        !shown.contains("### Example 2"),
        "one other spec has passed so far: {shown}"
    );

    // The same clamp spec again: its own earlier answer is not an example
    // (that would be the cache), the add answer is.
    let again = run(json!({"specs": [clamp_spec()], "options": {"examples": 5}})).await;
    let shown = first_system_prompt(&d, &again).await;
    assert!(shown.contains("return a + b"), "{shown}");
    assert!(!shown.contains("min(x, hi)"), "{shown}");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_stored_prompt_that_does_not_read_fails_the_job_naming_it_and_is_never_sent_as_an_empty_prompt() {
    let env = TestEnv::new().await;
    let llm = mock(REPAIR_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let spec = json!({"kind": "function", "task_description": "Wrong on purpose.", "entry_point": "never_right",
                      "test_cases": [{"input": 1, "expected": 1}]});
    let created = d
        .client
        .submit(&json!({"specs": [spec], "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    assert_eq!(llm.requests().len(), 1);

    // Attempt 1's stored prompt no longer reads as messages, and the job is
    // given more attempts and handed back to the queue: its repair prompt
    // would be built from that prompt.
    let pool = env.store.pool();
    sqlx::query("UPDATE attempts SET prompt = '\"not a message list\"'::jsonb")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'queued', max_attempts = 3, finished_at = NULL, error_code = NULL,
                         error_message = NULL, dispatched_at = NULL",
    )
    .execute(pool)
    .await
    .unwrap();

    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(job["error"]["code"], "internal", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the stored prompt of run 1 attempt 1 cannot be read"),
        "{message}"
    );
    assert_eq!(llm.requests().len(), 1, "no request was sent with a made-up prompt");
    w.stop().await;
    d.stop().await;
}
