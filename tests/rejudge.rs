//! Re-judging stored answers (`POST /v1/jobs/{id}/rejudge`,
//! `POST /v1/batches/{id}/rejudge`) end to end: dispatcher, Postgres, Redis,
//! worker, the mock LLM over HTTP (whose request log proves no model request
//! is made) and the bubblewrap sandbox.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, wait_for_batch};

/// `wrong_N` answers fail their tests; `refused_N` requests are refused by
/// the provider (400), so those jobs fail without any answer.
const SCRIPTS: &str = r#"
- name: wrong
  match: "`(?P<name>wrong_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a - b.\"\"\"\n    return a - b\n"
- name: refused
  match: "`refused_\\d+`"
  faults:
    - {status: 400}
  responses:
    - files:
        - path: solution.py
          content: "never sent\n"
"#;

fn named_spec(name: &str, i: usize) -> Value {
    let mut spec = add_spec(i);
    spec["entry_point"] = json!(format!("{name}_{i}"));
    spec
}

async fn post(url: &str, body: Option<Value>) -> (u16, Value) {
    let request = reqwest::Client::new().post(url);
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// (run, n, state) of every attempt of a job.
fn runs(attempts: &[Value]) -> Vec<(i64, i64, String)> {
    attempts
        .iter()
        .map(|a| {
            (
                a["run"].as_i64().unwrap(),
                a["n"].as_i64().unwrap(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_succeeded_job_rejudged_passes_again_in_a_new_run_that_names_its_source_without_a_model_request() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let created = d.client.submit(&json!({"specs": [add_spec(1)]}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(llm.requests().len(), 1);

    let (status, body) = post(&format!("{}/v1/jobs/{job_id}/rejudge", d.url), None).await;
    assert_eq!((status, body), (202, json!({"rejudged": 1})));
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(job["run"], 2, "{job}");
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");

    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (
            job["state"].as_str(),
            job["run"].as_i64(),
            job["result"]["run"].as_i64()
        ),
        (Some("succeeded"), Some(2), Some(2)),
        "{job}"
    );
    assert_eq!(llm.requests().len(), 1, "the re-judge asked the model");
    let a = d.attempts(job_id, true).await;
    assert_eq!(runs(&a), [(1, 1, "passed".into()), (2, 1, "passed".into())], "{a:#?}");
    let replay = &a[1];
    assert_eq!(replay["rejudged_from"], json!({"run": 1, "n": 1}));
    assert!(a[0].get("rejudged_from").is_none(), "{:?}", a[0]);
    assert_eq!(replay["response"], a[0]["response"]);
    assert_eq!(replay["usage"], json!({"prompt_tokens": 0, "completion_tokens": 0}));
    // Judged today: validated and tested again, and no time with the model.
    assert_eq!(replay["tests"]["passed"], 3, "{replay}");
    let timings = replay["timings_ms"].as_object().unwrap();
    assert!(
        timings.contains_key("validate") && timings.contains_key("sandbox") && !timings.contains_key("llm"),
        "{timings:?}"
    );
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_failed_job_whose_answer_is_wrong_stays_failed_on_rejudge_without_a_repair_and_a_retry_asks_the_model_again()
{
    let env = TestEnv::new().await;
    let llm = mock(SCRIPTS).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(
            &json!({"specs": [named_spec("wrong", 1)], "options": {"max_attempts": 2}}),
            None,
        )
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    let requests = llm.requests().len();
    assert_eq!(requests, 2);

    assert_eq!(d.client.rejudge_job(job_id).await.unwrap(), json!({"rejudged": 1}));
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["run"].as_i64(), job["attempts"].as_i64()),
        (Some("failed"), Some(2), Some(1)),
        "one attempt, no repair: {job}"
    );
    assert_eq!(job["error"]["code"], "tests_failed", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("re-judged, the stored answer fails: 3 of 3 tests failed"),
        "{message}"
    );
    assert_eq!(llm.requests().len(), requests, "the re-judge asked the model");
    let a = d.attempts(job_id, false).await;
    assert_eq!(
        runs(&a),
        [
            (1, 1, "failed".into()),
            (1, 2, "failed".into()),
            (2, 1, "failed".into())
        ]
    );
    // The latest answer is the one judged again.
    assert_eq!(a[2]["rejudged_from"], json!({"run": 1, "n": 2}));

    // A retry afterwards is an ordinary run again: it asks the model.
    d.client.retry_job(job_id).await.unwrap();
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(llm.requests().len(), requests + 2);
    let a = d.attempts(job_id, false).await;
    assert_eq!(a.len(), 5, "{a:#?}");
    assert!(
        a[3..].iter().all(|x| x["run"] == 3 && x.get("rejudged_from").is_none()),
        "{a:#?}"
    );
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn an_answer_failed_by_a_too_short_sandbox_time_limit_passes_when_rejudged_under_a_longer_one() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    // The judge of the day: runs killed after 2 s, and a test taking 3 s.
    let hasty = env.settings(&llm.base_url(), &[("KILN_SANDBOX_TIMEOUT_S", "2")]);
    let d = Dispatcher::start(&hasty).await;
    let w = InProcessWorker::start(&hasty).await;
    let spec = json!({
        "kind": "function",
        "task_description": "Return a + b (variant 1).",
        "entry_point": "add_1",
        "test_code": "import time\nfrom solution import add_1\n\ndef test_add():\n    time.sleep(3)\n    assert add_1(1, 2) == 3\n",
    });
    let created = d
        .client
        .submit(&json!({"specs": [spec], "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    w.stop().await;

    // The operator fixes the judge, then re-judges instead of paying again.
    let fixed = env.settings(&llm.base_url(), &[]);
    let w = InProcessWorker::start(&fixed).await;
    assert_eq!(d.client.rejudge_job(job_id).await.unwrap(), json!({"rejudged": 1}));
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["run"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{job}"
    );
    assert_eq!(llm.requests().len(), 1, "the re-judge asked the model");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_batch_rejudge_restarts_only_jobs_with_answers_in_the_given_states() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{SCRIPTS}")).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(
            &json!({"specs": [add_spec(1), named_spec("wrong", 2), named_spec("refused", 3)],
                    "options": {"max_attempts": 1}}),
            None,
        )
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let jobs: Vec<&str> = created["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(
        (
            batch["counts"]["succeeded"].as_i64(),
            batch["counts"]["failed"].as_i64()
        ),
        (Some(1), Some(2)),
        "{batch}"
    );
    let refused = d.client.job(jobs[2]).await.unwrap();
    assert_eq!(refused["error"]["code"], "llm_rejected", "{refused}");
    let requests = llm.requests().len();
    let run_of = |job: Value| job["run"].as_i64().unwrap();

    let url = format!("{}/v1/batches/{batch_id}/rejudge", d.url);
    let (status, body) = post(&url, Some(json!({"states": ["succeeded"]}))).await;
    assert_eq!((status, body), (202, json!({"rejudged": 1})));
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(run_of(d.client.job(jobs[0]).await.unwrap()), 2);
    assert_eq!(run_of(d.client.job(jobs[1]).await.unwrap()), 1);

    // By default succeeded and failed jobs, but only those with an answer.
    let (status, body) = post(&url, None).await;
    assert_eq!((status, body), (202, json!({"rejudged": 2})));
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(
        (
            batch["counts"]["succeeded"].as_i64(),
            batch["counts"]["failed"].as_i64()
        ),
        (Some(1), Some(2)),
        "{batch}"
    );
    let mut runs = Vec::new();
    for job in &jobs {
        runs.push(run_of(d.client.job(job).await.unwrap()));
    }
    assert_eq!(runs, [3, 2, 1]);
    assert_eq!(llm.requests().len(), requests, "a re-judge asked the model");

    // The job without an answer is refused on its own, saying why.
    let (status, body) = post(&format!("{}/v1/jobs/{}/rejudge", d.url, jobs[2]), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no stored answer"), "{message}");
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn rejudge_refuses_unfinished_and_unknown_jobs_and_bad_states_and_writes_nothing() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    // No worker: the job stays queued.
    let d = Dispatcher::start(&settings).await;
    let created = d.client.submit(&json!({"specs": [add_spec(1)]}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();

    let (status, body) = post(&format!("{}/v1/jobs/{job_id}/rejudge", d.url), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("job is queued"),
        "{body}"
    );
    // Running too.
    sqlx::query("UPDATE jobs SET state = 'running' WHERE id = $1::uuid")
        .bind(job_id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let (status, body) = post(&format!("{}/v1/jobs/{job_id}/rejudge", d.url), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("job is running"),
        "{body}"
    );

    let missing = uuid::Uuid::new_v4();
    for path in [format!("jobs/{missing}"), format!("batches/{missing}")] {
        let (status, body) = post(&format!("{}/v1/{path}/rejudge", d.url), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    let url = format!("{}/v1/batches/{batch_id}/rejudge", d.url);
    let (status, body) = post(&url, Some(json!({"states": ["failed", "running"]}))).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("states[1]")),
        "{body}"
    );
    let (status, body) = post(&url, Some(json!({"state": ["failed"]}))).await;
    assert_eq!(status, 400, "{body}");

    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["run"].as_i64()),
        (Some("running"), Some(1)),
        "{job}"
    );
    d.stop().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_rejudging_is_taken_over_and_the_rejudge_resumes_without_a_model_request() {
    use support::{Proc, eventually};

    let env = TestEnv::new().await;
    // A correct answer carrying a marker the victim worker aborts on while it
    // validates the answer: only the re-judge meets it there.
    let llm = mock(
        r#"
- name: marked
  match: "`marked`"
  responses:
    - files:
        - path: solution.py
          content: "def marked(x: int) -> int:\n    \"\"\"Identity.\"\"\"\n    # REJUDGE-POISON\n    return x\n"
"#,
    )
    .await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(
            &json!({"specs": [{"kind": "function", "task_description": "Identity.", "entry_point": "marked",
                               "test_cases": [{"input": 1, "expected": 1}]}]}),
            None,
        )
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let job_id = created["job_ids"][0].as_str().unwrap();
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    w.stop().await;
    assert_eq!(llm.requests().len(), 1);

    let mut victim = Proc::spawn(
        "kiln-worker",
        &env.vars(
            &llm.base_url(),
            &[
                ("KILN_WORKER_ID", "victim"),
                ("KILN_FAULT_ABORT_MARKER", "REJUDGE-POISON"),
            ],
        ),
    );
    d.client.rejudge_job(job_id).await.unwrap();
    eventually(Duration::from_secs(30), "the victim to die re-judging", || {
        let exited = victim.0.try_wait().unwrap().is_some();
        async move { exited }
    })
    .await;
    let _survivor = Proc::spawn(
        "kiln-worker",
        &env.vars(&llm.base_url(), &[("KILN_WORKER_ID", "survivor")]),
    );
    wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;

    let job = d.client.job(job_id).await.unwrap();
    assert_eq!(
        (job["state"].as_str(), job["run"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{job}"
    );
    let t = &job["takeovers"][0];
    assert_eq!(
        (t["run"].as_i64(), t["lost_by"].as_str(), t["activity"].as_str()),
        (Some(2), Some("victim"), Some("validating")),
        "{job}"
    );
    let a = d.attempts(job_id, false).await;
    assert_eq!(
        runs(&a),
        [(1, 1, "passed".into()), (2, 1, "passed".into())],
        "the same replay was resumed: {a:#?}"
    );
    assert_eq!(a[1]["rejudged_from"], json!({"run": 1, "n": 1}));
    assert_eq!(llm.requests().len(), 1, "the resumed re-judge asked the model");
    d.stop().await;
}
