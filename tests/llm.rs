//! The LLM layer against a real HTTP provider (kiln-mock-llm): every fault
//! class, fail-fast quota errors, truncated and malformed answers, budgets,
//! the result cache, the model ladder, prices, Anthropic and Azure, recorded
//! provider bodies, and the API key staying where it belongs.

mod support;

use std::time::Duration;

use kiln::config::Settings;
use kiln::llm::{ChatRequest, LlmError, Message};
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, wait_for_batch};

fn good_add(name: &str) -> String {
    format!(
        r#"
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
"#
    )
}

/// Runs one batch to its end with an in-process dispatcher and worker.
async fn run_batch(env: &TestEnv, settings: &Settings, batch: Value) -> (Dispatcher, Value, Vec<String>) {
    let d = Dispatcher::start(settings).await;
    let w = InProcessWorker::start(settings).await;
    let created = d.client.submit(&batch, None).await.unwrap();
    let status = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    w.stop().await;
    let ids = created["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let _ = env;
    (d, status, ids)
}

#[tokio::test]
async fn every_provider_fault_is_retried_without_spending_an_attempt() {
    let env = TestEnv::new().await;
    let script = format!(
        r#"
- name: faulty
  match: "`add_0`"
  faults:
    - {{status: 429, headers: {{retry-after-ms: "20"}}}}
    - {{status: 500}}
    - {{status: 503}}
    - {{status: 529}}
    - {{latency_ms: 2500}}
    - {{reset: true}}
    - {{malformed: true}}
    - {{empty: true}}
    - {{status: 429, headers: {{x-ratelimit-reset-requests: "30ms"}}}}
  responses:{}"#,
        good_add("add_0")
    );
    let llm = mock(&script).await;
    let settings = env.settings(
        &llm.base_url(),
        &[
            ("KILN_LLM_TIMEOUT_S", "1"),
            ("KILN_LLM_MAX_RETRIES", "12"),
            ("KILN_LLM_BREAKER_FAILURES", "50"),
        ],
    );
    let (d, batch, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    let a = d.attempts(&ids[0], false).await;
    assert_eq!(a.len(), 1, "faults spent no attempt: {a:#?}");
    assert_eq!(a[0]["llm_faults"], 9);
    let classes: Vec<&str> = a[0]["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [
            "rate_limited",
            "unavailable",
            "unavailable",
            "unavailable",
            "timeout",
            "transport",
            "malformed_body",
            "malformed_body",
            "rate_limited"
        ]
    );
    assert_eq!(llm.requests().len(), 10);
    d.stop().await;
}

#[tokio::test]
async fn absurd_provider_waits_are_clamped_so_the_job_still_finishes() {
    let env = TestEnv::new().await;
    let script = format!(
        r#"
- name: absurd-waits
  match: "`add_0`"
  faults:
    - {{status: 429, headers: {{retry-after: "1e300"}}}}
    - {{status: 429, headers: {{retry-after: "Fri, 31 Dec 9999 23:59:59 GMT"}}}}
    - {{status: 429, headers: {{retry-after-ms: "-5"}}}}
    - {{status: 429, headers: {{retry-after: "NaN"}}}}
    - {{status: 429, headers: {{x-ratelimit-reset-tokens: "99999999999999999999h"}}}}
  responses:{}"#,
        good_add("add_0")
    );
    let llm = mock(&script).await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_LLM_MAX_WAIT_S", "1"), ("KILN_LLM_BREAKER_FAILURES", "50")],
    );
    let started = std::time::Instant::now();
    let (d, batch, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let a = d.attempts(&ids[0], false).await;
    assert_eq!(a[0]["llm_faults"], 5, "{a:#?}");
    d.stop().await;
}

#[tokio::test]
async fn a_quota_error_fails_the_job_at_once_with_llm_quota() {
    let env = TestEnv::new().await;
    let script = format!(
        r#"
- name: broke
  match: "`add_0`"
  faults:
    - {{status: 429, quota: true}}
  responses:{}"#,
        good_add("add_0")
    );
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let (d, batch, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["failed"], 1);
    let job = d.client.job(&ids[0]).await.unwrap();
    assert_eq!(job["error"]["code"], "llm_quota", "{job}");
    assert_eq!(llm.requests().len(), 1, "no retry of a quota error");
    let a = d.attempts(&ids[0], false).await;
    assert_eq!(
        a[0]["state"], "error",
        "the attempt ended by the provider, not spent by the model"
    );
    d.stop().await;
}

/// llama-cpp-python's server answers a `response_format` it cannot do with
/// a 500 and a validation error, every time: that is a setting's fault, so
/// the job fails at once naming the setting, rather than retrying, opening
/// the breaker and requeueing in silence.
#[tokio::test]
async fn a_setting_the_server_refuses_fails_the_job_at_once_naming_the_setting_even_behind_a_500() {
    let env = TestEnv::new().await;
    let refusal = r#"{"error": {"message": "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}]", "type": "internal_server_error"}}"#;
    let script = format!(
        r#"
- name: no-schema
  match: "`add_0`"
  faults:
    - {{status: 500, body: {}}}
  responses:{}"#,
        serde_json::to_string(refusal).unwrap(),
        good_add("add_0")
    );
    let llm = mock(&script).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LLM_JSON_MODE", "json_schema")]);
    let (d, batch, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    let job = d.client.job(&ids[0]).await.unwrap();
    assert_eq!(job["error"]["code"], "llm_config", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the server rejects response_format json_schema (HTTP 500: [{'type': 'literal_error'")
            && message.ends_with("set KILN_LLM_JSON_MODE=json_object or off"),
        "{message}"
    );
    assert_eq!(llm.requests().len(), 1, "a refused setting is not retried");
    let a = d.attempts(&ids[0], false).await;
    assert_eq!(
        (a[0]["state"].as_str(), a[0]["llm_faults"].as_i64()),
        (Some("error"), Some(0)),
        "{a:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn the_temperature_and_the_token_field_are_sent_as_configured() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(
        &llm.base_url(),
        &[
            ("KILN_LLM_TEMPERATURE", "off"),
            ("KILN_LLM_TOKENS_PARAM", "max_completion_tokens"),
            ("KILN_LLM_MAX_TOKENS", "1234"),
        ],
    );
    let (d, batch, _) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(
        llm.requests()[0].params,
        json!({"temperature": null, "max_tokens": null, "max_completion_tokens": 1234, "response_format": "json_object", "extra": {}})
    );
    d.stop().await;
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_LLM_TEMPERATURE", "0.7"), ("KILN_LLM_JSON_MODE", "off")],
    );
    let (d, _, _) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    let params = &llm.requests()[0].params;
    assert_eq!(
        (
            params["temperature"].as_f64().map(|t| (t * 100.0).round()),
            &params["max_tokens"],
            &params["response_format"]
        ),
        (Some(70.0), &json!(8192), &Value::Null)
    );
    d.stop().await;
}

/// Reasoning models want their own fields (`reasoning_effort`), the other
/// token field and no temperature: settable for every batch by setting and
/// per batch by options, the batch's winning field by field.
#[tokio::test]
async fn a_batch_chooses_its_request_parameters_over_the_settings_and_extra_fields_reach_the_model() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_LLM_EXTRA_BODY", r#"{"reasoning_effort": "low", "top_p": 0.5}"#)],
    );
    let options = json!({
        "max_tokens": 777,
        "tokens_param": "max_completion_tokens",
        "temperature": "off",
        "extra_body": {"reasoning_effort": "high"},
    });
    let (d, batch, _) = run_batch(&env, &settings, json!({"specs": [add_spec(0)], "options": options})).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(
        llm.requests()[0].params,
        json!({
            "temperature": null,
            "max_tokens": null,
            "max_completion_tokens": 777,
            "response_format": "json_object",
            "extra": {"reasoning_effort": "high", "top_p": 0.5},
        })
    );
    d.stop().await;
}

/// The same wrong answer again would fail the same way and be paid for
/// again: every repair is warmer than the request before it, after a repeat
/// warmer still, and it then asks afresh: the original request and the
/// failures, saying why, without the answer the model kept copying.
#[tokio::test]
async fn each_repair_is_warmer_and_after_a_repeat_asks_afresh_without_the_copied_answer() {
    let env = TestEnv::new().await;
    let llm = mock(
        r#"
- name: stubborn
  match: "`add_0`"
  responses:
    - files:
        - path: solution.py
          content: "def add_0(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a - b\n"
"#,
    )
    .await;
    let settings = env.settings(&llm.base_url(), &[]);
    let (d, batch, ids) = run_batch(
        &env,
        &settings,
        json!({"specs": [add_spec(0)], "options": {"max_attempts": 4}}),
    )
    .await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    // 0.5 warmer per earlier attempt, and 0.5 more per earlier repeat:
    // attempt 2 repeats attempt 1, attempt 3 repeats both (capped at 1.2).
    let temperatures: Vec<i64> = llm
        .requests()
        .iter()
        .map(|r| (r.params["temperature"].as_f64().unwrap() * 100.0).round() as i64)
        .collect();
    assert_eq!(temperatures, vec![20, 70, 120, 120]);
    let attempts = d.attempts(&ids[0], true).await;
    // (messages, whether the model's earlier answer is among them, whether
    // the request says the answer repeated)
    let shapes: Vec<(usize, bool, bool)> = attempts
        .iter()
        .map(|a| {
            let messages = a["prompt"].as_array().unwrap();
            let text = |m: &Value| m["content"].as_str().unwrap().to_owned();
            (
                messages.len(),
                messages
                    .iter()
                    .any(|m| m["role"] == "assistant" || text(m).contains("return a - b")),
                messages.iter().any(|m| text(m).contains(kiln::pipeline::REPEAT_NOTE)),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![(2, false, false), (4, true, false), (2, false, true), (2, false, true)]
    );
    d.stop().await;
}

#[tokio::test]
async fn when_provider_faults_outlast_their_limit_the_job_fails_with_llm_unavailable() {
    let env = TestEnv::new().await;
    let script = format!(
        r#"
- name: down
  match: "`add_0`"
  faults: [{{status: 503}}, {{status: 503}}, {{status: 503}}, {{status: 503}}, {{status: 503}}]
  responses:{}"#,
        good_add("add_0")
    );
    let llm = mock(&script).await;
    let settings = env.settings(
        &llm.base_url(),
        &[("KILN_LLM_MAX_RETRIES", "3"), ("KILN_LLM_BREAKER_FAILURES", "50")],
    );
    let (d, _, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    let job = d.client.job(&ids[0]).await.unwrap();
    assert_eq!(job["error"]["code"], "llm_unavailable", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("HTTP 503"), "{job}");
    let a = d.attempts(&ids[0], false).await;
    assert_eq!((a.len(), a[0]["llm_faults"].as_i64()), (1, Some(4)));
    assert_eq!(a[0]["state"], "error");
    assert_eq!(llm.requests().len(), 4);
    d.stop().await;
}

#[tokio::test]
async fn truncated_and_malformed_answers_become_diagnostics_on_the_attempt() {
    let env = TestEnv::new().await;
    let script = r#"
- name: drifting
  match: "`add_0`"
  responses:
    - content: "{\"files\": [{\"path\": \"solution.py\", \"content\": \"def add_0(a, b):\\n    return"
      finish_reason: length
    - content: "Sure! The function adds two numbers."
    - files:
        - path: solution.py
          content: "def add_0(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
"#;
    let llm = mock(script).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let (d, batch, ids) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 1);
    let a = d.attempts(&ids[0], false).await;
    let first_rule = |i: usize| {
        a[i]["validation"]["diagnostics"][0]["rule"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (a[0]["state"].as_str(), first_rule(0).as_str()),
        (Some("failed"), "response-truncated")
    );
    assert_eq!(a[0]["finish_reason"], "length");
    assert_eq!(
        (a[1]["state"].as_str(), first_rule(1).as_str()),
        (Some("failed"), "response-format")
    );
    assert_eq!(a[2]["state"], "passed");
    d.stop().await;
}

#[tokio::test]
async fn the_circuit_breaker_holds_jobs_while_the_provider_is_down_and_resumes_after() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    llm.set_outage(Some(503));
    let settings = env.settings(
        &llm.base_url(),
        &[
            ("KILN_LLM_BREAKER_FAILURES", "3"),
            ("KILN_LLM_BREAKER_COOLDOWN_S", "1"),
            ("KILN_LLM_MAX_RETRIES", "20"),
        ],
    );
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let specs: Vec<Value> = (0..4).map(add_spec).collect();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    // While the outage lasts the breaker keeps requests rare: a probe per
    // cooldown rather than every job retrying in a loop.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = llm.requests().len();
    assert!(during < 20, "{during} requests during a 6 s outage");
    let batch = d.client.batch(batch_id).await.unwrap();
    assert_eq!(
        batch["counts"]["failed"], 0,
        "nothing fails while the breaker holds jobs: {batch}"
    );
    llm.set_outage(None);
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["counts"]["succeeded"], 4, "{batch}");
    for id in created["job_ids"].as_array().unwrap() {
        let a = d.attempts(id.as_str().unwrap(), false).await;
        assert_eq!(a.len(), 1, "no attempt spent by the outage");
    }
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_batch_over_its_token_budget_stops_cleanly_and_finishes_after_the_budget_is_raised() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LLM_MAX_TOKENS", "400")]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let specs: Vec<Value> = (0..6).map(add_spec).collect();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": {"budget_tokens": 1800}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    let succeeded = batch["counts"]["succeeded"].as_i64().unwrap();
    let failed = batch["counts"]["failed"].as_i64().unwrap();
    assert!(succeeded >= 1 && failed >= 1 && succeeded + failed == 6, "{batch}");
    let used =
        batch["usage"]["prompt_tokens"].as_i64().unwrap() + batch["usage"]["completion_tokens"].as_i64().unwrap();
    assert!(used <= 1800, "the budget is never exceeded: {used}");
    let stopped = d.client.all_jobs(batch_id, Some("failed")).await.unwrap();
    for job in &stopped {
        assert_eq!(job["error"]["code"], "budget_exhausted", "{job}");
    }

    // Raise the budget and retry: every job succeeds.
    let patched: Value = reqwest::Client::new()
        .patch(format!("{}/v1/batches/{batch_id}", d.url))
        .json(&json!({"options": {"budget_tokens": 100_000}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["options"]["budget_tokens"], 100_000);
    let retried = d.client.retry_batch(batch_id, &["failed".to_owned()]).await.unwrap();
    assert_eq!(retried["requeued"].as_i64(), Some(failed));
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(60)).await;
    assert_eq!(batch["counts"]["succeeded"], 6, "{batch}");

    let (prompt, completion): (i64, i64) = sqlx::query_as(
        "SELECT sum(a.prompt_tokens)::int8, sum(a.completion_tokens)::int8
         FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = $1::uuid",
    )
    .bind(batch_id)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(batch["usage"]["prompt_tokens"].as_i64(), Some(prompt));
    assert_eq!(batch["usage"]["completion_tokens"].as_i64(), Some(completion));
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn resubmitting_a_finished_batch_with_cache_makes_no_model_requests() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let specs: Vec<Value> = (0..5).map(add_spec).collect();
    let batch = json!({"specs": specs, "options": {"cache": true}});
    let (d, first, _) = run_batch(&env, &settings, batch.clone()).await;
    assert_eq!(first["counts"]["succeeded"], 5);
    let before = llm.requests().len();
    assert_eq!(before, 5);
    d.stop().await;

    let (d, second, ids) = run_batch(&env, &settings, batch).await;
    assert_eq!(second["counts"]["succeeded"], 5, "{second}");
    assert_eq!(
        llm.requests().len(),
        before,
        "a cached batch calls the model zero times"
    );
    assert_eq!(second["usage"]["prompt_tokens"], 0);
    for id in &ids {
        let a = d.attempts(id, false).await;
        assert!(a[0]["cached_from"].is_string(), "{a:#?}");
        let job = d.client.job(id).await.unwrap();
        assert_eq!(job["result"]["files"][0]["path"], "solution.py");
    }
    d.stop().await;
}

#[tokio::test]
async fn the_model_ladder_escalates_on_later_attempts_and_prices_each_attempt() {
    let env = TestEnv::new().await;
    let script = r#"
- name: ladder
  match: "`add_0`"
  responses:
    - files: [{path: solution.py, content: "def add_0(a: int, b: int) -> int:\n    \"\"\"Wrong.\"\"\"\n    return a - b\n"}]
    - files: [{path: solution.py, content: "def add_0(a: int, b: int) -> int:\n    \"\"\"Right.\"\"\"\n    return a + b\n"}]
"#;
    let llm = mock(script).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LLM_PRICES", "cheap=1/2,strong=10/20")]);
    let (d, batch, ids) = run_batch(
        &env,
        &settings,
        json!({"specs": [add_spec(0)], "options": {"models": ["cheap", "strong"]}}),
    )
    .await;
    let a = d.attempts(&ids[0], false).await;
    assert_eq!(
        (a[0]["model"].as_str(), a[1]["model"].as_str()),
        (Some("cheap"), Some("strong"))
    );
    let seen: Vec<String> = llm.requests().into_iter().map(|r| r.model).collect();
    assert_eq!(seen, ["cheap", "strong"]);
    let price = |x: &Value, p: f64, c: f64| {
        (x["usage"]["prompt_tokens"].as_f64().unwrap() * p + x["usage"]["completion_tokens"].as_f64().unwrap() * c)
            / 1e6
    };
    let (c0, c1) = (a[0]["cost_usd"].as_f64().unwrap(), a[1]["cost_usd"].as_f64().unwrap());
    assert!((c0 - price(&a[0], 1.0, 2.0)).abs() < 1e-12);
    assert!((c1 - price(&a[1], 10.0, 20.0)).abs() < 1e-12);
    assert!(
        (batch["usage"]["cost_usd"].as_f64().unwrap() - (c0 + c1)).abs() < 1e-12,
        "{batch}"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_job_runs_end_to_end_over_the_anthropic_messages_protocol() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let base = format!("http://{}/v1", llm.addr);
    let settings = env.settings(
        &base,
        &[
            ("KILN_LLM_PROVIDER", "anthropic"),
            ("KILN_LLM_API_KEY", "sk-ant-test-key"),
        ],
    );
    let (d, batch, _) = run_batch(&env, &settings, json!({"specs": [add_spec(0), add_spec(1)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 2, "{batch}");
    assert!(batch["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
    let r = llm.requests();
    assert!(r.iter().all(|r| r.authorization.as_deref() == Some("sk-ant-test-key")));
    d.stop().await;
}

#[tokio::test]
async fn a_job_runs_end_to_end_against_an_azure_deployment() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let base = format!("http://{}", llm.addr);
    let settings = env.settings(
        &base,
        &[
            ("KILN_LLM_PROVIDER", "azure"),
            ("KILN_LLM_API_KEY", "azure-key"),
            ("KILN_LLM_MODEL", "my-deployment"),
        ],
    );
    let (d, batch, _) = run_batch(&env, &settings, json!({"specs": [add_spec(0)]})).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(llm.requests()[0].authorization.as_deref(), Some("azure-key"));
    d.stop().await;
}

/// Serves one fixture body (with headers) and reads it with the real client.
async fn replay(provider: &str, fixture: &str, status: u16, headers: &str) -> Result<kiln::llm::Answer, LlmError> {
    let body = std::fs::read_to_string(format!("tests/fixtures/llm/{fixture}")).unwrap();
    let script = format!(
        "- name: replay\n  match: \".*\"\n  faults: [{{status: {status}, body: {}, headers: {headers}}}]\n  responses: [{{content: unused}}]\n",
        serde_json::to_string(&body).unwrap()
    );
    let llm = mock(&script).await;
    let settings = Settings::from_vars([
        ("KILN_LLM_PROVIDER".to_owned(), provider.to_owned()),
        ("KILN_LLM_BASE_URL".to_owned(), llm.base_url()),
        ("KILN_LLM_API_KEY".to_owned(), "sk-fixture".to_owned()),
    ])
    .unwrap();
    let client = kiln::llm::build(&settings.llm).unwrap();
    let request = ChatRequest {
        model: "m".into(),
        messages: vec![Message::system("s"), Message::user("spec")],
        max_tokens: 100,
        temperature: Some(0.2),
        tokens_param: None,
        extra_body: serde_json::Map::new(),
        json: true,
        attempt_id: uuid::Uuid::new_v4().to_string(),
    };
    client.chat(&request).await
}

#[tokio::test]
async fn recorded_openai_bodies_are_read_as_the_provider_meant_them() {
    let ok = replay("openai", "openai_success.json", 200, "{}").await.unwrap();
    assert!(ok.content.starts_with(r#"{"files": [{"path": "solution.py""#));
    assert_eq!((ok.usage.prompt_tokens, ok.usage.completion_tokens), (412, 47));
    assert_eq!(ok.finish_reason.as_deref(), Some("stop"));
    let cut = replay("openai", "openai_length.json", 200, "{}").await.unwrap();
    assert!(cut.truncated());
    let refusal = replay("openai", "openai_refusal.json", 200, "{}").await.unwrap();
    assert_eq!(refusal.content, "I'm sorry, I can't help with that request.");

    let e = replay(
        "openai",
        "openai_429_rate_limit.json",
        429,
        r#"{x-ratelimit-reset-requests: "120ms", x-ratelimit-remaining-requests: "0"}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        LlmError::RateLimited {
            retry_after: Some(Duration::from_millis(120))
        }
    );
    let e = replay("openai", "openai_429_insufficient_quota.json", 429, "{}")
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Quota { status: 429, .. }), "{e}");
    let e = replay("openai", "openai_401_invalid_key.json", 401, "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LlmError::Auth { status: 401, message } if !message.contains("sk-proj")),
        "{e}"
    );
    let e = replay("openai", "openai_400_context_length.json", 400, "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LlmError::Rejected { status: 400, message } if message.contains("maximum context length")),
        "{e}"
    );
    let e = replay("openai", "openai_500.json", 500, "{}").await.unwrap_err();
    assert!(matches!(e, LlmError::Unavailable { status: 500, .. }), "{e}");
}

#[tokio::test]
async fn recorded_anthropic_bodies_are_read_as_the_provider_meant_them() {
    let tool = replay("anthropic", "anthropic_tool_use.json", 200, "{}").await.unwrap();
    let files =
        kiln::parse::parse_response(&tool.content, kiln::parse::Expected::Function { entry_point: None }).unwrap();
    assert_eq!(files[0].path, "solution.py");
    assert_eq!((tool.usage.prompt_tokens, tool.usage.completion_tokens), (1187, 96));
    let text = replay("anthropic", "anthropic_text.json", 200, "{}").await.unwrap();
    assert_eq!(
        text.usage.prompt_tokens,
        951 + 120 + 2048,
        "cache reads and writes are prompt tokens"
    );
    assert!(kiln::parse::parse_response(&text.content, kiln::parse::Expected::Function { entry_point: None }).is_ok());
    let cut = replay("anthropic", "anthropic_max_tokens.json", 200, "{}")
        .await
        .unwrap();
    assert!(cut.truncated());

    let e = replay("anthropic", "anthropic_529_overloaded.json", 529, "{}")
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Unavailable { status: 529, .. }), "{e}");
    let e = replay(
        "anthropic",
        "anthropic_429_rate_limit.json",
        429,
        r#"{retry-after: "7"}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    let e = replay("anthropic", "anthropic_400_credit.json", 400, "{}")
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Quota { status: 400, .. }), "{e}");
    let e = replay("anthropic", "anthropic_401.json", 401, "{}").await.unwrap_err();
    assert!(matches!(e, LlmError::Auth { status: 401, .. }), "{e}");
}
