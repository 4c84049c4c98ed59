//! Human review of passing jobs (`options.review`) against real Postgres,
//! Redis, sandbox and a mock model: a passing job of a review batch waits in
//! `awaiting_review` with its files, out of every worker's hands, and keeps
//! its batch unfinished until `POST /v1/jobs/{id}/review` decides it.

mod support;

use std::time::Duration;

use kiln::auth::Scope;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, eventually, mock, wait_for_batch};

const WAIT: Duration = Duration::from_secs(90);

async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a batch until nothing is queued or running and some job awaits
/// review.
async fn wait_for_review(d: &Dispatcher, token: Option<&str>, batch_id: &str) -> Value {
    let url = format!("{}/v1/batches/{batch_id}", d.url);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, batch) = get(&url, token).await;
        if batch["state"] == "awaiting_review" {
            return batch;
        }
        assert!(
            batch["finished_at"].is_null(),
            "the batch finished without awaiting review: {batch}"
        );
        assert!(std::time::Instant::now() < deadline, "no job awaits review: {batch}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ids(created: &Value) -> (String, Vec<String>) {
    let jobs = created["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    (created["batch_id"].as_str().unwrap().to_owned(), jobs)
}

async fn review_rows(env: &TestEnv, job_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reviews WHERE job_id = $1::uuid")
        .bind(job_id)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_passing_job_of_a_review_batch_waits_with_its_files_and_its_batch_finishes_once_every_job_is_approved() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let submit = env.token(Scope::Submit).await;
    let admin = env.token(Scope::Admin).await;

    let (status, created) = post(
        &format!("{}/v1/batches", d.url),
        Some(&submit),
        &json!({"specs": [add_spec(1), add_spec(2)], "options": {"review": true}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (batch_id, jobs) = ids(&created);
    let batch = wait_for_review(&d, Some(&submit), &batch_id).await;
    assert_eq!(batch["counts"]["awaiting_review"], 2, "{batch}");
    assert_eq!(batch["counts"]["succeeded"], 0, "{batch}");
    assert_eq!(batch["options"]["review"], true, "{batch}");
    assert!(batch["finished_at"].is_null(), "{batch}");

    // The job shows its result, and its files are served, before any decision.
    let (_, job) = get(&format!("{}/v1/jobs/{}", d.url, jobs[0]), Some(&submit)).await;
    assert_eq!(job["state"], "awaiting_review", "{job}");
    assert!(job["finished_at"].is_null(), "{job}");
    assert_eq!(job["reviews"], json!([]));
    let files: Vec<&str> = job["result"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["solution.py"], "{job}");
    let file = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{}/files/solution.py", d.url, jobs[0]))
        .bearer_auth(&submit)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert!(file.text().await.unwrap().contains("def add_1"));
    // Out of every worker's hands: no lease, nothing in flight.
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(leased, 0);
    let metrics = d.metrics().await;
    assert!(metrics.contains("kiln_jobs{state=\"awaiting_review\"} 2"), "{metrics}");

    // The decision is an admin's: a submit token is refused and changes nothing.
    let review_url = |job: &str| format!("{}/v1/jobs/{job}/review", d.url);
    let (status, refused) = post(&review_url(&jobs[0]), Some(&submit), &json!({"decision": "approve"})).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(review_rows(&env, &jobs[0]).await, 0);

    let (status, approved) = post(
        &review_url(&jobs[0]),
        Some(&admin),
        &json!({"decision": "approve", "comment": "reads well"}),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "succeeded", "{approved}");
    assert!(approved["finished_at"].is_string(), "{approved}");
    assert_eq!(approved["result"], job["result"], "approval keeps the result");
    let review = &approved["reviews"][0];
    assert_eq!(review["decision"], "approve", "{approved}");
    assert_eq!(review["comment"], "reads well");
    assert_eq!((review["run"].clone(), review["attempt"].clone()), (json!(1), json!(1)));
    assert_eq!(review["by"]["name"], "test admin", "{review}");
    assert!(review["at"].is_string());

    // One job still awaits review: the batch is not finished.
    let (_, batch) = get(&format!("{}/v1/batches/{batch_id}", d.url), Some(&submit)).await;
    assert_eq!(batch["state"], "awaiting_review", "{batch}");
    assert_eq!(
        (
            batch["counts"]["awaiting_review"].clone(),
            batch["counts"]["succeeded"].clone()
        ),
        (json!(1), json!(1))
    );
    assert!(batch["finished_at"].is_null(), "{batch}");

    let (status, _) = post(&review_url(&jobs[1]), Some(&admin), &json!({"decision": "approve"})).await;
    assert_eq!(status, 200);
    let (_, batch) = get(&format!("{}/v1/batches/{batch_id}", d.url), Some(&submit)).await;
    assert_eq!(batch["state"], "succeeded", "{batch}");
    assert_eq!(batch["counts"]["succeeded"], 2, "{batch}");
    assert!(batch["finished_at"].is_string(), "{batch}");
    worker.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_rejected_job_fails_with_rejected_in_review_and_the_comment_and_a_retry_is_reviewed_again() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(&json!({"specs": [add_spec(1)], "options": {"review": true}}), None)
        .await
        .unwrap();
    let (batch_id, jobs) = ids(&created);
    wait_for_review(&d, None, &batch_id).await;
    let review_url = format!("{}/v1/jobs/{}/review", d.url, jobs[0]);

    let (status, rejected) = post(
        &review_url,
        None,
        &json!({"decision": "reject", "comment": "uses a global"}),
    )
    .await;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "failed", "{rejected}");
    assert_eq!(
        rejected["error"],
        json!({"code": "rejected_in_review", "message": "uses a global"})
    );
    assert!(
        rejected["result"].is_null(),
        "a rejected result is no result: {rejected}"
    );
    assert_eq!(rejected["reviews"][0]["decision"], "reject");
    assert!(rejected["reviews"][0]["by"].is_null(), "no token with KILN_AUTH=off");
    // The rejected files stay readable as their attempt's.
    let (status, _) = get(&format!("{}/v1/jobs/{}/files/solution.py", d.url, jobs[0]), None).await;
    assert_eq!(status, 404);
    let file = reqwest::get(format!(
        "{}/v1/jobs/{}/files/solution.py?run=1&attempt=1",
        d.url, jobs[0]
    ))
    .await
    .unwrap();
    assert_eq!(file.status(), 200);
    let batch = wait_for_batch(&d.client, &batch_id, WAIT).await;
    assert_eq!(batch["state"], "failed", "{batch}");

    // Retried by the ordinary retry (failed jobs), it runs and awaits review again.
    assert_eq!(
        d.client.retry_batch(&batch_id, &["failed".into()]).await.unwrap()["requeued"],
        1
    );
    wait_for_review(&d, None, &batch_id).await;
    let (status, rejected) = post(&review_url, None, &json!({"decision": "reject"})).await;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["error"]["message"], "rejected in review");
    let runs: Vec<(i64, &str)> = rejected["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["run"].as_i64().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(runs, [(1, "reject"), (2, "reject")], "the history is kept");
    worker.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn without_review_a_passing_job_succeeds_at_once_and_reviewing_it_is_a_409_naming_its_state() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(&json!({"specs": [add_spec(1), add_spec(2)]}), None)
        .await
        .unwrap();
    let (batch_id, jobs) = ids(&created);
    let batch = wait_for_batch(&d.client, &batch_id, WAIT).await;
    assert_eq!(batch["state"], "succeeded", "{batch}");
    assert_eq!(batch["counts"]["awaiting_review"], 0, "{batch}");
    assert_eq!(batch["options"]["review"], false, "{batch}");

    let (status, error) = post(
        &format!("{}/v1/jobs/{}/review", d.url, jobs[0]),
        None,
        &json!({"decision": "approve"}),
    )
    .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "conflict");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("job is succeeded"),
        "{error}"
    );
    let (status, error) = post(
        &format!("{}/v1/jobs/{}/review", d.url, uuid::Uuid::now_v7()),
        None,
        &json!({"decision": "approve"}),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "not_found");
    assert_eq!(env.count("reviews").await, 0);
    worker.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_bad_review_body_is_a_400_naming_the_field_and_decides_nothing() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(&json!({"specs": [add_spec(1)], "options": {"review": true}}), None)
        .await
        .unwrap();
    let (batch_id, jobs) = ids(&created);
    wait_for_review(&d, None, &batch_id).await;
    let url = format!("{}/v1/jobs/{}/review", d.url, jobs[0]);
    for (body, field) in [
        (json!({"decision": "maybe"}), "decision"),
        (json!({"decision": "APPROVE"}), "decision"),
        (json!({}), "decision"),
        (json!({"comment": "fine"}), "decision"),
        (json!({"decision": 1}), "decision"),
        (json!({"decision": "approve", "comment": "x".repeat(10_001)}), "comment"),
        (json!({"decision": "approve", "comment": 5}), "comment"),
        (json!({"decision": "approve", "verdict": "yes"}), "verdict"),
        (json!(["approve"]), "body"),
    ] {
        let (status, error) = post(&url, None, &body).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["field"], field, "{body} → {error}");
    }
    let (_, job) = get(&format!("{}/v1/jobs/{}", d.url, jobs[0]), None).await;
    assert_eq!(job["state"], "awaiting_review", "{job}");
    assert_eq!(env.count("reviews").await, 0);
    worker.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_decisions_on_one_job_give_exactly_one_200_and_one_409() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let specs: Vec<Value> = (1..=6).map(add_spec).collect();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": {"review": true}}), None)
        .await
        .unwrap();
    let (batch_id, jobs) = ids(&created);
    eventually(WAIT, "every job awaiting review", || async {
        d.client.batch(&batch_id).await.unwrap()["counts"]["awaiting_review"] == 6
    })
    .await;
    for job in &jobs {
        let url = format!("{}/v1/jobs/{job}/review", d.url);
        let (yes, no) = (json!({"decision": "approve"}), json!({"decision": "reject"}));
        let (approve, reject) = tokio::join!(post(&url, None, &yes), post(&url, None, &no));
        let mut statuses = [approve.0, reject.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{approve:?} {reject:?}");
        let winner = if approve.0 == 200 { "succeeded" } else { "failed" };
        let (_, now) = get(&format!("{}/v1/jobs/{job}", d.url), None).await;
        assert_eq!(now["state"], winner, "{now}");
        assert_eq!(review_rows(&env, job).await, 1);
    }
    let batch = wait_for_batch(&d.client, &batch_id, WAIT).await;
    let counts = &batch["counts"];
    assert_eq!(
        counts["succeeded"].as_i64().unwrap() + counts["failed"].as_i64().unwrap(),
        6,
        "{batch}"
    );
    worker.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_worker_restart_and_a_redelivered_message_leave_a_job_awaiting_review_untouched_and_cancel_ends_it() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(&json!({"specs": [add_spec(1)], "options": {"review": true}}), None)
        .await
        .unwrap();
    let (batch_id, jobs) = ids(&created);
    wait_for_review(&d, None, &batch_id).await;
    let before = d.client.job(&jobs[0]).await.unwrap();
    let requests = llm.requests().len();
    worker.stop().await;

    // A new worker, and the job's message delivered again by hand.
    let worker = InProcessWorker::start(&settings).await;
    let redelivered = kiln::worker::Worker::build(&settings).await.unwrap();
    assert!(redelivered.process(jobs[0].parse().unwrap()).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = d.client.job(&jobs[0]).await.unwrap();
    assert_eq!(after["state"], "awaiting_review", "{after}");
    assert_eq!(after["run"], before["run"]);
    assert_eq!(after["attempts"], 1, "{after}");
    assert_eq!(after["result"], before["result"]);
    assert_eq!(after["updated_at"], before["updated_at"], "the job was written to");
    assert_eq!(llm.requests().len(), requests, "the model was asked again");
    assert_eq!(env.count("attempts").await, 1);

    let cancelled = d.client.cancel_job(&jobs[0]).await.unwrap();
    assert_eq!(cancelled["cancelled"], 1);
    let job = d.client.job(&jobs[0]).await.unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["result"].is_null(), "{job}");
    let batch = wait_for_batch(&d.client, &batch_id, WAIT).await;
    assert_eq!(batch["state"], "cancelled", "{batch}");
    worker.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_cached_result_in_a_review_batch_awaits_review_and_a_rejected_result_is_never_reused() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let submit = |options: Value| {
        let client = d.client.clone();
        async move {
            let created = client
                .submit(&json!({"specs": [add_spec(7)], "options": options}), None)
                .await
                .unwrap();
            ids(&created)
        }
    };
    let (first, _) = submit(json!({"cache": true})).await;
    assert_eq!(wait_for_batch(&d.client, &first, WAIT).await["state"], "succeeded");

    let (reviewed, jobs) = submit(json!({"cache": true, "review": true})).await;
    wait_for_review(&d, None, &reviewed).await;
    let attempts = d.attempts(&jobs[0], false).await;
    assert!(
        attempts[0]["cached_from"].is_string(),
        "not from the cache: {attempts:?}"
    );
    let (status, _) = post(
        &format!("{}/v1/jobs/{}/review", d.url, jobs[0]),
        None,
        &json!({"decision": "reject", "comment": "not what we want"}),
    )
    .await;
    assert_eq!(status, 200);

    // The rejected copy's source is not handed out again: the model answers.
    let requests = llm.requests().len();
    let (after, jobs) = submit(json!({"cache": true})).await;
    assert_eq!(wait_for_batch(&d.client, &after, WAIT).await["state"], "succeeded");
    let attempts = d.attempts(&jobs[0], false).await;
    assert!(
        attempts[0]["cached_from"].is_null(),
        "reused a rejected result: {attempts:?}"
    );
    assert_eq!(llm.requests().len(), requests + 1);
    worker.stop().await;
    d.stop().await;
}
