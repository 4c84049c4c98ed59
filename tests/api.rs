//! The HTTP API v1 contract against real Postgres and Redis: validation
//! names fields and writes nothing, idempotency, status, paging, errors.
//! Every request carries a real `submit` token, as clients' do
//! (`KILN_AUTH=required`; `tests/auth.rs` tests the tokens themselves).

mod support;

use kiln::auth::Scope;
use serde_json::{Value, json};
use support::{Dispatcher, TestEnv, add_spec};

/// A dispatcher that asks for tokens, and a `submit` token for it.
async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> (Dispatcher, String) {
    let mut vars = vec![("KILN_AUTH", "required")];
    vars.extend_from_slice(extra);
    let d = Dispatcher::start(&env.settings("http://127.0.0.1:9", &vars)).await;
    (d, env.token(Scope::Submit).await)
}

async fn post(url: &str, token: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn service_spec() -> Value {
    json!({"kind": "service", "service_name": "notes", "description": "A notes service.",
           "endpoints": [{"method": "GET", "path": "/notes", "description": "list notes"},
                         {"method": "POST", "path": "/notes", "description": "create a note"}]})
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_naming_the_field_and_write_nothing() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let url = format!("{}/v1/batches", d.url);

    let mut bad_method = service_spec();
    bad_method["endpoints"][1]["method"] = json!("FETCH");
    let mut mistyped = add_spec(0);
    mistyped["test_cases"] = json!("not a list");
    let mut missing = add_spec(0);
    missing.as_object_mut().unwrap().remove("task_description");

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"specs": [add_spec(0), add_spec(1), add_spec(2), bad_method]}),
            "specs[3].endpoints[1].method",
        ),
        (json!({"specs": [mistyped]}), "specs[0].test_cases"),
        (json!({"specs": [missing]}), "specs[0].task_description"),
        (json!({"specs": []}), "specs"),
        (json!({"name": "no specs"}), "specs"),
        (
            json!({"specs": [{"kind": "lambda", "task_description": "x"}]}),
            "specs[0].kind",
        ),
        (
            json!({"specs": [add_spec(0)], "options": {"max_attempts": "three"}}),
            "options.max_attempts",
        ),
        (
            json!({"specs": [add_spec(0)], "options": {"model": "a", "models": ["b"]}}),
            "options.models",
        ),
        (json!({"specs": [add_spec(0)], "priority": 3}), "priority"),
        (json!(["not", "an", "object"]), "body"),
    ];
    for (body, field) in cases {
        let (status, error) = post(&url, &token, body.to_string()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["field"], field, "{body} → {error}");
        assert_eq!(error["error"]["code"], "invalid_request");
        assert!(
            error["error"]["message"].as_str().unwrap().starts_with(field),
            "{error}"
        );
    }
    let (status, error) = post(&url, &token, "{\"specs\": [").await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "body");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("line 1"),
        "{error}"
    );

    assert_eq!(env.count("batches").await, 0);
    assert_eq!(env.count("jobs").await, 0);
    d.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_and_writes_nothing() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[("KILN_MAX_BODY_MB", "1")]).await;
    let mut spec = add_spec(0);
    spec["task_description"] = json!("x".repeat(2 * 1024 * 1024));
    let (status, error) = post(
        &format!("{}/v1/batches", d.url),
        &token,
        json!({ "specs": [spec] }).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "body_too_large");
    assert!(
        error["error"]["message"].as_str().unwrap().starts_with("body:"),
        "{error}"
    );
    assert_eq!(env.count("batches").await, 0);
    assert_eq!(env.count("jobs").await, 0);
    d.stop().await;
}

#[tokio::test]
async fn a_batch_is_created_with_job_ids_in_spec_order_and_reports_its_status() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let specs: Vec<Value> = (0..5).map(add_spec).chain([service_spec()]).collect();
    let (status, created) = post(
        &format!("{}/v1/batches", d.url),
        &token,
        json!({"name": "mixed", "specs": specs}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<&str> = created["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    for (i, id) in ids.iter().enumerate() {
        let (_, job) = get(&format!("{}/v1/jobs/{id}", d.url), &token).await;
        let expected_kind = if i == 5 { "service" } else { "function" };
        assert_eq!(job["kind"], expected_kind);
        assert_eq!(job["run"], 1);
        assert_eq!(job["max_attempts"], 3);
    }
    let batch_id = created["batch_id"].as_str().unwrap();
    let (status, batch) = get(&format!("{}/v1/batches/{batch_id}", d.url), &token).await;
    assert_eq!(status, 200);
    assert_eq!(batch["name"], "mixed");
    assert_eq!(batch["total"], 6);
    assert_eq!(batch["counts"]["queued"], 6);
    assert_eq!(batch["usage"]["prompt_tokens"], 0);
    assert!(batch["finished_at"].is_null());

    // Paging: 6 jobs in pages of 4, in submission order.
    let (_, page1) = get(&format!("{}/v1/batches/{batch_id}/jobs?limit=4", d.url), &token).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = get(
        &format!("{}/v1/batches/{batch_id}/jobs?limit=4&cursor={cursor}", d.url),
        &token,
    )
    .await;
    let listed: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["jobs"].as_array().unwrap())
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    assert!(page2["next_cursor"].is_null());
    let (_, failed) = get(&format!("{}/v1/batches/{batch_id}/jobs?state=failed", d.url), &token).await;
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 0);
    let (status, error) = get(&format!("{}/v1/batches/{batch_id}/jobs?state=broken", d.url), &token).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("state")));
    d.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_batch() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let body = json!({"specs": [add_spec(0), add_spec(1)]}).to_string();
    let send = |body: String| {
        reqwest::Client::new()
            .post(format!("{}/v1/batches", d.url))
            .bearer_auth(&token)
            .header("Idempotency-Key", "nightly-2026-11-21")
            .body(body)
            .send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(env.count("batches").await, 1);
    assert_eq!(env.count("jobs").await, 2);

    let other = send(json!({"specs": [add_spec(2)]}).to_string()).await.unwrap();
    assert_eq!(other.status().as_u16(), 409);
    assert_eq!(env.count("jobs").await, 2);
    d.stop().await;
}

#[tokio::test]
async fn unknown_ids_are_404_and_malformed_ids_name_the_field() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/batches/{missing}"),
        format!("/v1/jobs/{missing}"),
        format!("/v1/jobs/{missing}/attempts"),
    ] {
        let (status, body) = get(&format!("{}{path}", d.url), &token).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, body) = get(&format!("{}/v1/jobs/not-a-uuid", d.url), &token).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("job_id")));
    let (status, body) = post(&format!("{}/v1/jobs/{missing}/retry", d.url), &token, "").await;
    assert_eq!(status, 404, "{body}");
    d.stop().await;
}

#[tokio::test]
async fn readiness_reports_postgres_and_redis_without_a_token() {
    let env = TestEnv::new().await;
    let (d, _token) = start(&env, &[]).await;
    let response = reqwest::get(format!("{}/readyz", d.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "ok");
    let response = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let metrics = d.metrics().await;
    assert!(metrics.contains("kiln_queue_window_jobs 0"), "{metrics}");
    d.stop().await;
}
