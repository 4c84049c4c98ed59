//! The HTTP API v1 contract against real Postgres and Redis: validation
//! names fields and writes nothing, idempotency, status, paging, errors,
//! and the typed client reading every answer into its view.
//! Every request carries a real `submit` token, as clients' do
//! (`KILN_AUTH=required`; `tests/auth.rs` tests the tokens themselves).

mod support;

use std::time::{Duration, Instant};

use kiln::auth::Scope;
use kiln::client::{BatchListQuery, Client, ClientError};
use kiln::views::{BatchView, Cancelled, Requeued};
use serde::Serialize;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock};

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

/// A batch body with a NUL character in the field at `path`.
fn with_nul(path: &str) -> (Value, &str) {
    let mut spec = add_spec(0);
    let body = match path {
        "name" => json!({"name": "a\u{0}b", "specs": [spec]}),
        "specs[0].task_description" => {
            spec["task_description"] = json!("sum\u{0}");
            json!({"specs": [spec]})
        }
        "specs[0].test_cases[1].expected" => {
            spec["test_cases"][1]["expected"] = json!("\u{0}");
            json!({"specs": [spec]})
        }
        "specs[0].test_cases[2].input.a\\0" => {
            spec["test_cases"][2]["input"] = json!({"a\u{0}": 1});
            json!({"specs": [spec]})
        }
        "options.model" => json!({"specs": [spec], "options": {"model": "gpt\u{0}"}}),
        _ => unreachable!(),
    };
    (body, path)
}

#[tokio::test]
async fn a_nul_character_anywhere_in_a_batch_is_a_400_naming_the_field_and_writes_nothing() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let url = format!("{}/v1/batches", d.url);
    for path in [
        "name",
        "specs[0].task_description",
        "specs[0].test_cases[1].expected",
        "specs[0].test_cases[2].input.a\\0",
        "options.model",
    ] {
        let (body, field) = with_nul(path);
        let (status, error) = post(&url, &token, body.to_string()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    // A raw NUL byte in the JSON text is not JSON at all.
    let (status, error) = post(&url, &token, b"{\"specs\": [\"\x00\"]}".to_vec()).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("body")),
        "{error}"
    );
    assert_eq!(env.count("batches").await, 0);
    assert_eq!(env.count("jobs").await, 0);

    // The other bodies go through the same parser.
    let (_, created) = post(&url, &token, json!({"specs": [add_spec(0)]}).to_string()).await;
    let batch = created["batch_id"].as_str().unwrap();
    let (status, error) = post(
        &format!("{}/v1/batches/{batch}/retry", d.url),
        &token,
        r#"{"states": ["fail\u0000ed"]}"#,
    )
    .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("states[0]")),
        "{error}"
    );
    let (status, _) = get(
        &format!(
            "{}/v1/jobs/{}/files/a%00b.py",
            d.url,
            created["job_ids"][0].as_str().unwrap()
        ),
        &token,
    )
    .await;
    assert_eq!(status, 400);
    d.stop().await;
}

#[tokio::test]
async fn every_numeric_option_out_of_range_is_a_400_naming_it_and_writes_nothing() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let url = format!("{}/v1/batches", d.url);
    let cases = [
        ("budget_tokens", "9223372036854775808"),
        ("budget_tokens", "18446744073709551615"),
        ("budget_tokens", "18446744073709551616"),
        ("budget_tokens", "1000000000001"),
        ("budget_tokens", "1e300"),
        ("budget_tokens", "0"),
        ("budget_tokens", "-1"),
        ("max_attempts", "0"),
        ("max_attempts", "21"),
        ("max_attempts", "4294967296"),
        ("max_attempts", "-1"),
        ("max_attempts", "1.5"),
        ("priority", "1001"),
        ("priority", "-1001"),
        ("priority", "2147483648"),
        ("priority", "-9223372036854775809"),
        ("timeout_s", "0"),
        ("timeout_s", "901"),
        ("timeout_s", "4294967296"),
        ("timeout_s", "1e-300"),
    ];
    for (option, value) in cases {
        let body = format!(r#"{{"specs": [{}], "options": {{"{option}": {value}}}}}"#, add_spec(0));
        let (status, error) = post(&url, &token, body).await;
        assert_eq!(status, 400, "{option}={value} → {error}");
        assert_eq!(
            error["error"]["field"],
            format!("options.{option}"),
            "{option}={value} → {error}"
        );
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.contains("invalid number"), "{option}={value}: {message}");
    }
    assert_eq!(env.count("batches").await, 0);

    let (_, created) = post(&url, &token, json!({"specs": [add_spec(0)]}).to_string()).await;
    let batch = created["batch_id"].as_str().unwrap();
    let client = reqwest::Client::new();
    for value in ["9223372036854775808", "1000000000001", "0"] {
        let response = client
            .patch(format!("{}/v1/batches/{batch}", d.url))
            .bearer_auth(&token)
            .body(format!(r#"{{"options": {{"budget_tokens": {value}}}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{value}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], "options.budget_tokens", "{error}");
    }
    d.stop().await;
}

/// Ints beyond 64 bits in a spec keep every digit from the request body
/// through Postgres to what a worker reads (they were floats, so a wrong
/// answer near 25! passed); tagged expected values must be well formed;
/// numbers Python could not read are a 400 naming them.
#[tokio::test]
async fn expected_integers_beyond_64_bits_are_stored_with_every_digit_and_bad_numbers_or_tags_are_400s() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let url = format!("{}/v1/batches", d.url);
    let big = "15511210043330985984000000";
    let spec = |input: &str, expected: &str| {
        format!(
            r#"{{"specs": [{{"kind": "function", "task_description": "Factorial.", "entry_point": "f",
                 "test_cases": [{{"input": {input}, "expected": {expected}}}]}}]}}"#
        )
    };
    let (status, created) = post(&url, &token, spec("[1180591620717411303424]", big)).await;
    assert_eq!(status, 201, "{created}");
    let job = created["job_ids"][0].as_str().unwrap();
    let (_, view) = get(&format!("{}/v1/jobs/{job}", d.url), &token).await;
    let case = &view["spec"]["test_cases"][0];
    assert_eq!(case["expected"].to_string(), big, "{view}");
    assert_eq!(case["input"].to_string(), "[1180591620717411303424]", "{view}");
    // As a worker reads it.
    let stored: Value = sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1::uuid")
        .bind(job)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let kiln::spec::Spec::Function(stored) = serde_json::from_value(stored).unwrap() else {
        panic!("a function spec")
    };
    assert_eq!(stored.test_cases[0].expected.to_string(), big);

    let nines = "9".repeat(4301);
    for (body, field) in [
        (
            spec("[1]", r#"{"$sets": [1]}"#),
            "specs[0].test_cases[0].expected.$sets",
        ),
        (
            spec("[1]", r#"[{"$float": "NaN"}]"#),
            "specs[0].test_cases[0].expected[0].$float",
        ),
        (
            spec("[1]", r#"{"$bytes": "xyz"}"#),
            "specs[0].test_cases[0].expected.$bytes",
        ),
        (spec("[1]", "1e400"), "specs[0].test_cases[0].expected"),
        (spec("[1e999]", "1"), "specs[0].test_cases[0].input[0]"),
        (spec("[1]", &nines), "specs[0].test_cases[0].expected"),
    ] {
        let (status, error) = post(&url, &token, body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    assert_eq!(env.count("batches").await, 1);
    d.stop().await;
}

#[tokio::test]
async fn a_model_name_too_long_or_with_control_or_bidi_characters_is_refused() {
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[]).await;
    let url = format!("{}/v1/batches", d.url);
    for (options, field) in [
        (json!({"model": "m".repeat(201)}), "options.model"),
        (json!({"model": "m".repeat(300_000)}), "options.model"),
        (json!({"model": "gpt\u{202E}4"}), "options.model"),
        (json!({"model": "gpt\n4"}), "options.model"),
        (json!({"models": ["ok", "\u{2066}x"]}), "options.models[1]"),
        (json!({"models": vec!["m"; 21]}), "options.models"),
    ] {
        let (status, error) = post(
            &url,
            &token,
            json!({"specs": [add_spec(0)], "options": options}).to_string(),
        )
        .await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (400, Some(field)),
            "{error}"
        );
    }
    let (status, _) = post(
        &url,
        &token,
        json!({"specs": [add_spec(0)], "options": {"model": "m".repeat(200)}}).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(env.count("batches").await, 1);
    d.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_its_promised_body_is_dropped_after_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let (d, token) = start(&env, &[("KILN_HTTP_BODY_TIMEOUT_S", "1")]).await;
    let addr = d.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for path in ["/v1/batches", "/v1/batches/00000000-0000-0000-0000-000000000000/retry"] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
                 content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"specs\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        held.push(conn);
    }
    for mut conn in held {
        let mut answer = Vec::new();
        // The server answers 408 and closes: read to the end, well before 10 s.
        tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("the connection was not dropped")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert_eq!(env.count("batches").await, 0);
    d.stop().await;
}

/// Checks that a typed answer, written back as JSON, is exactly what the
/// dispatcher sends for `path` now: a field the server adds, renames or
/// retypes without its view in `kiln::views` is lost or refused on the
/// way, and fails here.
async fn same_as_sent(d: &Dispatcher, token: &str, path: &str, typed: &impl Serialize) {
    let (status, sent) = get(&format!("{}{path}", d.url), token).await;
    assert_eq!(status, 200, "{path}: {sent}");
    assert_eq!(serde_json::to_value(typed).unwrap(), sent, "{path}");
}

async fn finished(client: &Client, batch_id: &str) -> BatchView {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let batch = client.batch(batch_id).await.unwrap();
        if batch.finished_at.is_some() {
            return batch;
        }
        assert!(Instant::now() < deadline, "batch did not finish: {batch:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_every_answer_into_its_view_exactly_as_the_dispatcher_sent_it() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let token = env.token(Scope::Submit).await;
    let client = Client::with_token(&d.url, &token).unwrap();

    let created = client
        .submit(&json!({"name": "typed", "specs": [add_spec(1), add_spec(2)]}), None)
        .await
        .unwrap();
    assert_eq!(created.job_ids.len(), 2);
    let id = created.batch_id.to_string();
    let batch = finished(&client, &id).await;
    assert_eq!(
        (batch.state.as_str(), batch.total, batch.counts.succeeded),
        ("succeeded", 2, 2)
    );
    assert!(batch.usage.prompt_tokens > 0, "{batch:?}");
    assert!(batch.created_by.is_some(), "{batch:?}");
    same_as_sent(&d, &token, &format!("/v1/batches/{id}"), &batch).await;

    let jobs = client.all_jobs(&id, None).await.unwrap();
    let listed: Vec<_> = jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(listed, created.job_ids);
    same_as_sent(&d, &token, &format!("/v1/batches/{id}/jobs"), &json!({ "jobs": jobs })).await;

    let job_id = created.job_ids[0].to_string();
    let job = client.job(&job_id).await.unwrap();
    assert_eq!(job.state, "succeeded");
    assert!(job.result.as_ref().is_some_and(|r| !r.files.is_empty()), "{job:?}");
    same_as_sent(&d, &token, &format!("/v1/jobs/{job_id}"), &job).await;

    let attempts = client.attempts(&job_id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].state.as_str(), attempts[0].phase.as_str()),
        ("passed", "tested")
    );
    assert!(attempts[0].tests.is_some(), "{attempts:?}");
    same_as_sent(&d, &token, &format!("/v1/jobs/{job_id}/attempts"), &attempts).await;

    let query = BatchListQuery {
        name: Some("typed".into()),
        ..BatchListQuery::default()
    };
    let batches = client.batches(&query, 10).await.unwrap();
    assert_eq!(batches, [batch]);
    same_as_sent(&d, &token, "/v1/batches?name=typed", &json!({ "batches": batches })).await;

    let workers = client.workers().await.unwrap();
    assert_eq!(workers.workers.len(), 1, "{workers:?}");
    assert!(workers.workers[0].jobs.is_empty(), "{workers:?}");
    same_as_sent(&d, &token, "/v1/workers", &workers).await;

    let report = client.report(&id).await.unwrap();
    assert_eq!((report.attempts[0].n, report.attempts[0].passed), (1, 2));
    assert!(report.per_success.is_some(), "{report:?}");
    same_as_sent(&d, &token, &format!("/v1/batches/{id}/report"), &report).await;

    // Without a worker the retried jobs wait, queued, until cancelled.
    worker.stop().await;
    let requeued = client.retry_batch(&id, &["succeeded".into()]).await.unwrap();
    assert_eq!(requeued, Requeued { requeued: 2 });
    assert_eq!(client.job(&job_id).await.unwrap().run, 2);
    assert_eq!(client.cancel_batch(&id).await.unwrap(), Cancelled { cancelled: 2 });
    assert_eq!(client.batch(&id).await.unwrap().state, "cancelled");

    // Errors are read into their body too.
    match client.batch(&uuid::Uuid::now_v7().to_string()).await {
        Err(ClientError::Api { status: 404, code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("expected a 404: {other:?}"),
    }
    d.stop().await;
}
