//! The LLM layer across real worker processes: one rate limit and one cap
//! on requests in flight shared by all of them, and the API key staying
//! inside the worker.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, Proc, TestEnv, add_spec, wait_for_batch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_share_one_rate_limit_and_see_under_five_percent_429s() {
    let env = TestEnv::new().await;
    let scripts: Vec<kiln_mock_llm::ScriptFile> = serde_yaml_ng::from_str(ADD_SCRIPT).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = kiln_mock_llm::MockOptions { rate_limit_rpm: 600 };
    let llm = kiln_mock_llm::MockServer::start_with(listener, scripts, options).unwrap();
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let vars = env.vars(
        &llm.base_url(),
        &[("KILN_LLM_RPM", "600"), ("KILN_WORKER_CONCURRENCY", "16")],
    );
    let _workers: Vec<Proc> = (0..4).map(|_| Proc::spawn("kiln-worker", &vars)).collect();

    let specs: Vec<Value> = (0..300).map(add_spec).collect();
    let started = Instant::now();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(600),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(batch["counts"]["succeeded"], 300, "{batch}");

    let requests = llm.requests();
    let limited = requests.iter().filter(|r| r.status == 429).count();
    eprintln!(
        "300 jobs in {elapsed:?}: {} requests, {limited} answered 429",
        requests.len()
    );
    assert!(
        limited * 100 < requests.len() * 5,
        "{limited} of {} requests were rate limited",
        requests.len()
    );
    // Paced at 600/min, 300 requests cannot finish much faster than 30 s.
    assert!(elapsed >= Duration::from_secs(25), "{elapsed:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_reaches_the_provider_and_nothing_else() {
    let key = format!("sk-kiln-planted-{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::new().await;
    let llm = support::mock(
        r#"
- name: snoop
  match: "`snoop`"
  responses:
    - files:
        - path: solution.py
          content: "def snoop() -> str:\n    \"\"\"Report the environment the solution sees.\"\"\"\n    import os\n    return repr(dict(os.environ))\n"
"#,
    )
    .await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    // Debug logs: any accidental logging of settings or headers would show.
    let vars = env.vars(&llm.base_url(), &[("KILN_LLM_API_KEY", &key), ("KILN_LOG", "debug")]);
    let mut worker = Proc::spawn("kiln-worker", &vars);
    let test_code = r#"
import glob, os
from solution import snoop

def test_the_environment_is_reported_for_inspection():
    seen = {"test process": dict(os.environ), "solution process": snoop()}
    for path in glob.glob("/proc/*/environ"):
        try:
            seen[path] = open(path, "rb").read().decode("latin-1")
        except OSError as e:
            seen[path] = "unreadable: %s" % e
    # Fail on purpose: the failure message carries what the sandbox saw
    # into the attempt's test report, where the search below looks.
    raise AssertionError(repr(seen))
"#;
    let spec = json!({"kind": "function", "task_description": "Return the environment.", "entry_point": "snoop",
                      "test_code": test_code});
    let created = d
        .client
        .submit(&json!({"specs": [spec], "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    worker.terminate();

    // The provider saw the key…
    assert_eq!(
        llm.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {key}").as_str())
    );
    // …the sandbox reported its environment (so the search below means something)…
    let report: String = sqlx::query_scalar("SELECT tests::text FROM attempts")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert!(
        report.contains("'PATH'") && report.contains("solution process"),
        "{report}"
    );
    // …and the key is nowhere in the database (prompts, responses, reports,
    // artifacts, errors), the worker's log or the sandbox's environment.
    // (Artifacts' bytea content is compared as text, not as its hex form.)
    for (table, text) in [
        ("batches", "t::text"),
        ("jobs", "t::text"),
        ("attempts", "t::text"),
        ("artifacts", "t.path || convert_from(t.content, 'UTF8')"),
    ] {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t WHERE {text} LIKE '%' || $1 || '%' OR {text} LIKE '%kiln-planted%'"
        ))
        .bind(&key)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
        assert_eq!(hits, 0, "the key leaked into {table}");
    }
    let log = std::fs::read_to_string(&worker.1).unwrap();
    assert!(log.contains("claimed"), "the worker logged its work: {log}");
    assert!(
        !log.contains(&key) && !log.contains("kiln-planted"),
        "the key leaked into the worker's log"
    );
    d.stop().await;
}

/// Answers every `add_N` spec correctly, slowly: each request takes 400 ms
/// at the server, like a local model server's one slot.
const SLOW_ADD_SCRIPT: &str = r#"
- name: slow-add
  match: "`(?P<name>add_\\d+)`"
  latency_ms: 400
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_keep_to_one_shared_in_flight_cap_and_waiting_for_it_never_times_a_request_out() {
    let env = TestEnv::new().await;
    let llm = support::mock(SLOW_ADD_SCRIPT).await;
    let d = Dispatcher::start(&env.settings(&llm.base_url(), &[])).await;
    // 24 jobs queue for 2 places far longer than the 1 s request timeout;
    // each request itself takes 0.4 s.
    let vars = env.vars(
        &llm.base_url(),
        &[
            ("KILN_LLM_MAX_IN_FLIGHT", "2"),
            ("KILN_LLM_TIMEOUT_S", "1"),
            ("KILN_WORKER_CONCURRENCY", "8"),
        ],
    );
    let _workers: Vec<Proc> = (0..2).map(|_| Proc::spawn("kiln-worker", &vars)).collect();
    let specs: Vec<Value> = (0..24).map(add_spec).collect();
    let started = Instant::now();
    let created = d.client.submit(&json!({ "specs": specs }), None).await.unwrap();
    let batch = wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(180),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(batch["counts"]["succeeded"], 24, "{batch}");
    let faults: i64 = sqlx::query_scalar("SELECT COALESCE(sum(llm_faults), 0)::bigint FROM attempts")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(faults, 0, "a request timed out or failed while waiting for its place");

    // A third request can only arrive once one of the two before it was
    // answered (400 ms at the server): at most two in flight at any time.
    let mut arrivals: Vec<u128> = llm.requests().iter().map(|r| r.at_ms).collect();
    assert_eq!(arrivals.len(), 24, "each job asked the model once");
    arrivals.sort_unstable();
    let tightest = arrivals.windows(3).map(|w| w[2] - w[0]).min().unwrap();
    eprintln!("24 jobs in {elapsed:?} with 2 in flight; tightest three arrivals {tightest} ms apart");
    assert!(tightest >= 380, "three requests in flight at once: {tightest} ms");
    d.stop().await;
}
