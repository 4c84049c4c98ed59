//! `GET /v1/batches/{id}/report` on a live dispatcher and worker with the
//! mock model: jobs that pass at once, pass after a repair, and fail in
//! each way the model can fail, so every figure of the report has a known
//! value.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kiln::views::BatchReport;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, mock, wait_for_batch};

/// Beside `ADD_SCRIPT` (right at once): `clamp` fails its tests then is
/// repaired, `broken` has a syntax error then is repaired, `never_right`
/// always fails its tests, `hopeless` always has a syntax error, `mute`
/// always answers without any file.
const SCRIPTS: &str = r#"
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
- name: hopeless
  match: "`hopeless`"
  responses:
    - files:
        - path: solution.py
          content: "def hopeless(x: int) -> int:\n    return x +\n"
- name: mute
  match: "`mute`"
  responses:
    - content: "I would rather not write any code today."
"#;

fn function(name: &str, test_cases: &Value) -> Value {
    json!({"kind": "function", "task_description": format!("Implement {name}."), "entry_point": name,
           "test_cases": test_cases})
}

fn specs() -> Vec<Value> {
    let doubles = json!([{"input": 2, "expected": 4}, {"input": -3, "expected": -6}]);
    vec![
        add_spec(1),
        add_spec(2),
        function(
            "clamp",
            &json!([{"input": [5, 0, 10], "expected": 5}, {"input": [50, 0, 10], "expected": 10}]),
        ),
        function("broken", &doubles),
        function("never_right", &doubles),
        function("hopeless", &doubles),
        function("mute", &doubles),
    ]
}

async fn report(d: &Dispatcher, batch_id: &str) -> BatchReport {
    let value = d.client.report(batch_id).await.expect("the report");
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("not a report ({e}): {value:#}"))
}

/// Error-severity diagnostics by rule over every attempt of `jobs`' current
/// runs, counted from `GET /v1/jobs/{id}/attempts`.
async fn rules_from_attempts(d: &Dispatcher, jobs: &[String]) -> BTreeMap<String, i64> {
    let mut rules = BTreeMap::new();
    for job in jobs {
        let run = d.client.job(job).await.unwrap()["run"].as_i64().unwrap();
        for a in d.attempts(job, false).await.iter().filter(|a| a["run"] == run) {
            for diagnostic in a["validation"]["diagnostics"].as_array().into_iter().flatten() {
                if diagnostic["severity"] == "error" {
                    *rules
                        .entry(diagnostic["rule"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
            }
        }
    }
    rules
}

/// 2 jobs pass at attempt 1, 2 at attempt 2, and 3 fail (one in each way).
async fn check_outcomes(r: &BatchReport, d: &Dispatcher, jobs: &[String]) {
    assert_eq!((r.total, r.counts.succeeded, r.counts.failed), (7, 4, 3), "{r:#?}");
    // Attempt 1: all 7 jobs, the two adds pass. Attempt 2: the 5 others,
    // clamp and broken pass. Attempt 3: the 3 hopeless ones, none passes.
    let rates: Vec<(i32, i64, i64, i64, i64)> = r
        .attempts
        .iter()
        .map(|a| (a.n, a.jobs, a.passed, a.failed, a.passed_by_now))
        .collect();
    assert_eq!(rates, vec![(1, 7, 2, 5, 2), (2, 5, 2, 3, 4), (3, 3, 0, 3, 4)]);
    let pass_rates: Vec<(f64, f64)> = r
        .attempts
        .iter()
        .map(|a| (a.pass_rate, a.cumulative_pass_rate))
        .collect();
    assert_eq!(
        pass_rates,
        vec![(2.0 / 7.0, 2.0 / 7.0), (2.0 / 5.0, 4.0 / 7.0), (0.0, 4.0 / 7.0)]
    );
    assert!(r.attempts.iter().all(|a| a.errored == 0 && a.running == 0), "{r:#?}");

    // Failures by the code that ended each job.
    let failures: Vec<(&str, i64)> = r.failures.iter().map(|f| (f.code.as_str(), f.count)).collect();
    assert_eq!(
        failures,
        vec![("invalid_response", 1), ("tests_failed", 1), ("validation_failed", 1)]
    );
    // Failed attempts by where they failed: the tests of clamp's first and
    // never_right's three; the static checks of broken's first, hopeless's
    // three and mute's three.
    let ended: Vec<(&str, &str, Option<&str>, i64)> = r
        .attempt_failures
        .iter()
        .map(|a| {
            (
                a.state.as_str(),
                a.phase.as_str(),
                a.code.map(kiln::domain::ErrorCode::as_str),
                a.count,
            )
        })
        .collect();
    assert_eq!(
        ended,
        vec![("failed", "validated", None, 7), ("failed", "tested", None, 4)]
    );
    // Error diagnostics by rule: the syntax errors of broken (once) and
    // hopeless (three times), mute's three unreadable answers; and the
    // same tally as the attempts themselves give.
    let rules: BTreeMap<String, i64> = r.rules.iter().map(|x| (x.rule.clone(), x.diagnostics)).collect();
    assert_eq!(rules, rules_from_attempts(d, jobs).await);
    let syntax = r
        .rules
        .iter()
        .find(|x| x.rule == "python-syntax")
        .expect("python-syntax");
    assert_eq!((syntax.attempts, syntax.jobs), (4, 2), "{r:#?}");
    let format = r
        .rules
        .iter()
        .find(|x| x.rule == "response-format")
        .expect("response-format");
    assert_eq!((format.diagnostics, format.attempts, format.jobs), (3, 3, 1), "{r:#?}");
    assert!(
        r.rules.windows(2).all(|w| w[0].diagnostics >= w[1].diagnostics),
        "{r:#?}"
    );
}

/// Tokens and cost: the batch's, and each success's share of them.
async fn check_usage(r: &BatchReport, status: &Value, d: &Dispatcher, jobs: &[String]) {
    assert_eq!(
        r.usage.prompt_tokens,
        status["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        r.usage.completion_tokens,
        status["usage"]["completion_tokens"].as_i64().unwrap()
    );
    let mut from_attempts = (0, 0);
    for job in jobs {
        for a in d.attempts(job, false).await {
            from_attempts.0 += a["usage"]["prompt_tokens"].as_i64().unwrap();
            from_attempts.1 += a["usage"]["completion_tokens"].as_i64().unwrap();
        }
    }
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), from_attempts);
    assert!(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    let each = r.per_success.clone().expect("per success");
    assert!(close(each.prompt_tokens, r.usage.prompt_tokens as f64 / 4.0), "{r:#?}");
    assert!(
        close(each.completion_tokens, r.usage.completion_tokens as f64 / 4.0),
        "{r:#?}"
    );
    // At $1 per million prompt tokens and $2 per million completion ones.
    let cost = (r.usage.prompt_tokens as f64 + 2.0 * r.usage.completion_tokens as f64) / 1e6;
    assert!(close(r.usage.cost_usd.unwrap(), cost), "{r:#?}");
    assert!(close(each.cost_usd.unwrap(), cost / 4.0), "{r:#?}");
}

/// Phase times: every phase the attempts record, and the wait before each
/// job's first attempt; percentiles in order.
fn check_phases(r: &BatchReport) {
    let phases: Vec<(&str, i64)> = r.phases.iter().map(|p| (p.phase.as_str(), p.count)).collect();
    // 15 attempts; 8 reached the sandbox (both adds, clamp twice, broken's
    // second, never_right three times).
    assert_eq!(
        phases,
        vec![
            ("queue", 7),
            ("llm", 15),
            ("validate", 15),
            ("sandbox", 8),
            ("total", 15)
        ]
    );
    for p in &r.phases {
        assert!(
            0.0 <= p.p50_ms && p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms && p.p99_ms <= p.max_ms,
            "{p:?}"
        );
    }
    let sandbox = r.phases.iter().find(|p| p.phase == "sandbox").unwrap();
    assert!(sandbox.max_ms > 0.0, "{sandbox:?}");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_pass_rates_per_attempt_cost_per_success_phase_times_and_failures() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{SCRIPTS}")).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_LLM_PRICES", "mock-model=1/2")]);
    let d = Dispatcher::start(&settings).await;
    let w = InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(&json!({"specs": specs(), "options": {"max_attempts": 3}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();
    let jobs: Vec<String> = support::job_ids(&created);
    let status = wait_for_batch(&d.client, &batch_id, Duration::from_secs(120)).await;
    let r = report(&d, &batch_id).await;
    assert_eq!(r.batch_id.to_string(), batch_id);
    check_outcomes(&r, &d, &jobs).await;
    check_usage(&r, &status, &d, &jobs).await;
    check_phases(&r);

    // A retry starts new runs: the report follows them, while the tokens
    // of the replaced runs still count.
    let before = r;
    let requeued = d.client.retry_batch(&batch_id, &["failed".to_owned()]).await.unwrap();
    assert_eq!(requeued["requeued"], 3);
    wait_for_batch(&d.client, &batch_id, Duration::from_secs(120)).await;
    let after = report(&d, &batch_id).await;
    let rates: Vec<(i32, i64, i64)> = after.attempts.iter().map(|a| (a.n, a.jobs, a.passed)).collect();
    assert_eq!(rates, vec![(1, 7, 2), (2, 5, 2), (3, 3, 0)]);
    assert_eq!(after.failures, before.failures);
    assert_eq!(after.rules, before.rules);
    assert!(after.usage.prompt_tokens > before.usage.prompt_tokens, "{after:#?}");
    assert!(close(
        after.per_success.unwrap().prompt_tokens,
        after.usage.prompt_tokens as f64 / 4.0
    ));
    // Jobs in their second run have no recorded queue wait.
    let queue = after.phases.iter().find(|p| p.phase == "queue").unwrap();
    assert_eq!(queue.count, 4);
    w.stop().await;
    d.stop().await;
}

#[tokio::test]
async fn a_batch_nothing_ran_for_reports_no_rates_and_an_unknown_or_malformed_id_is_refused() {
    let env = TestEnv::new().await;
    let d = Dispatcher::start(&env.settings("http://127.0.0.1:9", &[])).await;
    let created = d
        .client
        .submit(&json!({"specs": [add_spec(1), add_spec(2)]}), None)
        .await
        .unwrap();
    let r = report(&d, created["batch_id"].as_str().unwrap()).await;
    assert_eq!((r.total, r.counts.queued), (2, 2));
    assert!(
        r.attempts.is_empty() && r.phases.is_empty() && r.failures.is_empty(),
        "{r:#?}"
    );
    assert!(r.attempt_failures.is_empty() && r.rules.is_empty(), "{r:#?}");
    assert_eq!(r.per_success, None);
    assert_eq!((r.usage.prompt_tokens, r.usage.cost_usd), (0, None));

    let missing = reqwest::get(format!("{}/v1/batches/{}/report", d.url, uuid::Uuid::new_v4()))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let malformed = reqwest::get(format!("{}/v1/batches/nope/report", d.url)).await.unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["field"], "batch_id", "{body}");
    d.stop().await;
}
