//! Logs (issue 13), read from the built binaries' standard error written to a
//! file: no colour codes off a terminal; the dispatcher's request ids, its
//! access log and the id on every line logged while serving a request; the
//! worker's per-job fields and why an attempt failed.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use support::{Dispatcher, Proc, TestEnv, mock, wait_for_batch};

const WAIT: Duration = Duration::from_secs(30);

/// Polls a process's log until a line gives `pick` a value.
async fn line_of<T>(proc: &Proc, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(&proc.1).unwrap_or_default();
        if let Some(found) = log.lines().find_map(&pick) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the log within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JSON log line's own fields with those of every span it was logged in,
/// as one object.
fn fields(line: &str) -> Option<Value> {
    let line: Value = serde_json::from_str(line).ok()?;
    let mut all: Map<String, Value> = line["fields"].as_object()?.clone();
    for span in line["spans"].as_array().into_iter().flatten() {
        for (k, v) in span.as_object()? {
            all.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Some(Value::Object(all))
}

fn json_lines(proc: &Proc) -> Vec<Value> {
    let log = std::fs::read_to_string(&proc.1).unwrap();
    log.lines().filter_map(fields).collect()
}

/// A `kiln-dispatcher` process on a free port, with JSON logs, and its URL.
async fn dispatcher(env: &TestEnv) -> (Proc, String) {
    let proc = Proc::spawn(
        "kiln-dispatcher",
        &env.vars("http://127.0.0.1:9", &[("KILN_LOG_FORMAT", "json")]),
    );
    let port = line_of(&proc, "`dispatcher listening`", |line| {
        let f = fields(line)?;
        (f["message"] == "dispatcher listening").then(|| f["port"].as_u64().unwrap())
    })
    .await;
    (proc, format!("http://127.0.0.1:{port}"))
}

async fn get(url: &str, request_id: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    request.send().await.unwrap()
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id header")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let env = TestEnv::new().await;
    // An empty `NO_COLOR` allows colour: only the missing terminal is left
    // to turn it off.
    let proc = Proc::spawn(
        "kiln-dispatcher",
        &env.vars("http://127.0.0.1:9", &[("KILN_LOG_FORMAT", "text"), ("NO_COLOR", "")]),
    );
    // Colour codes would sit between `port` and `=`: strip them to find the
    // port either way, so the test fails on the codes, not on a timeout.
    let ansi = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let port_field = regex::Regex::new(r"dispatcher listening.* port=(\d+)").unwrap();
    let port: u16 = line_of(&proc, "`dispatcher listening`", |line| {
        let plain = ansi.replace_all(line, "");
        Some(port_field.captures(&plain)?[1].parse().unwrap())
    })
    .await;
    let answer = get(&format!("http://127.0.0.1:{port}/healthz"), None).await;
    assert_eq!(answer.status(), 200);
    line_of(&proc, "access line", |line| {
        line.contains("request served").then_some(())
    })
    .await;

    let log = std::fs::read_to_string(&proc.1).unwrap();
    assert!(
        !log.contains("\x1b["),
        "colour codes in a log written to a file:\n{log:?}"
    );
    assert!(log.contains(" INFO "), "{log}");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_that_its_access_log_line_names() {
    let env = TestEnv::new().await;
    let (proc, url) = dispatcher(&env).await;

    let first = get(&format!("{url}/healthz"), None).await;
    let second = get(&format!("{url}/healthz"), None).await;
    let (a, b) = (request_id(&first), request_id(&second));
    assert_ne!(a, b, "two requests, two ids");
    for id in [&a, &b] {
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7, "{id}");
    }

    // A caller's own short token is kept, on error answers too.
    let batch = uuid::Uuid::new_v4();
    let given = get(&format!("{url}/v1/batches/{batch}"), Some("client-42.retry:1")).await;
    assert_eq!(given.status(), 404);
    assert_eq!(request_id(&given), "client-42.retry:1");
    let unknown = get(&format!("{url}/no/such/route"), Some("lost-1")).await;
    assert_eq!(
        (unknown.status().as_u16(), request_id(&unknown)),
        (404, "lost-1".to_owned())
    );

    // Anything else is replaced by a fresh id.
    for bad in ["x".repeat(65), "two words".to_owned(), "a\"b<script>".to_owned()] {
        let answer = get(&format!("{url}/healthz"), Some(&bad)).await;
        let id = request_id(&answer);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} was answered with {id:?}");
    }

    // One access line per request, with the id, the route's pattern and the
    // raw path.
    let access = |id: &str| {
        let id = id.to_owned();
        move |line: &str| {
            let f = fields(line)?;
            (f["message"] == "request served" && f["request_id"] == id.as_str()).then_some(f)
        }
    };
    let line = line_of(&proc, "the access line of the first request", access(&a)).await;
    assert_eq!(
        (&line["method"], &line["route"], &line["path"], &line["status"]),
        (&json!("GET"), &json!("/healthz"), &json!("/healthz"), &json!(200)),
        "{line:?}"
    );
    assert!(line["latency_ms"].is_u64(), "{line:?}");
    let line = line_of(&proc, "the access line of the given id", access("client-42.retry:1")).await;
    assert_eq!(
        (&line["route"], &line["path"], &line["status"]),
        (
            &json!("/v1/batches/{id}"),
            &json!(format!("/v1/batches/{batch}")),
            &json!(404)
        ),
        "{line:?}"
    );
    let line = line_of(&proc, "the access line of an unknown route", access("lost-1")).await;
    assert_eq!(
        (&line["route"], &line["status"]),
        (&json!("unmatched"), &json!(404)),
        "{line:?}"
    );
    let served = json_lines(&proc)
        .iter()
        .filter(|f| f["message"] == "request served")
        .count();
    assert_eq!(served, 7, "one access line per request");
}

#[tokio::test]
async fn a_line_logged_while_serving_a_request_names_its_request_id() {
    let env = TestEnv::new().await;
    let (proc, url) = dispatcher(&env).await;
    // The database disappears: the readiness check logs why it fails.
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", support::postgres_base()))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", env.db_name))
        .execute(&admin)
        .await
        .unwrap();

    let answer = get(&format!("{url}/readyz"), Some("probe-7")).await;
    assert_eq!(answer.status(), 503);
    let line = line_of(&proc, "the failed readiness check", |line| {
        let f = fields(line)?;
        (f["message"] == "readiness check failed" && f["dependency"] == "postgres").then_some(f)
    })
    .await;
    assert_eq!(line["request_id"], "probe-7", "{line:?}");
}

/// `clamp` fails a test, then passes; `broken` fails validation, then passes.
const FAIL_ONCE: &str = r#"
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
"#;

#[tokio::test]
async fn a_workers_lines_name_the_job_and_a_failed_attempt_says_why() {
    let env = TestEnv::new().await;
    let llm = mock(FAIL_ONCE).await;
    let d = Dispatcher::start(&env.settings(&llm.base_url(), &[])).await;
    let worker = Proc::spawn(
        "kiln-worker",
        &env.vars(&llm.base_url(), &[("KILN_LOG_FORMAT", "json")]),
    );
    let clamp = json!({"kind": "function", "task_description": "Clamp x into [lo, hi].", "entry_point": "clamp",
                       "test_cases": [{"input": [5, 0, 10], "expected": 5}, {"input": [50, 0, 10], "expected": 10},
                                      {"input": [-3, 0, 10], "expected": 0}]});
    let broken = json!({"kind": "function", "task_description": "Double x.", "entry_point": "broken",
                        "test_cases": [{"input": 2, "expected": 4}]});
    let created = d.client.submit(&json!({"specs": [clamp, broken]}), None).await.unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let batch = wait_for_batch(&d.client, batch_id, Duration::from_secs(90)).await;
    assert_eq!(batch["counts"]["succeeded"], 2, "{batch}");
    let (clamp_job, broken_job) = (&created["job_ids"][0], &created["job_ids"][1]);

    let lines = json_lines(&worker);
    let failed: Vec<_> = lines.iter().filter(|f| f["message"] == "attempt failed").collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    for (job, why) in [
        (
            clamp_job,
            "1 of 3 tests failed, first: case_1: clamp(50, 0, 10): expected 10, got 50",
        ),
        (broken_job, "1 static check error, first: solution.py:2:"),
    ] {
        let line = failed
            .iter()
            .find(|f| f["job_id"] == *job)
            .unwrap_or_else(|| panic!("no `attempt failed` line of {job}: {failed:#?}"));
        assert_eq!(
            (&line["batch_id"], &line["run"], &line["attempt"]),
            (&json!(batch_id), &json!(1), &json!(1)),
            "{line:?}"
        );
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with(why), "{reason:?} does not start with {why:?}");
    }
    let broken_reason = failed.iter().find(|f| f["job_id"] == *broken_job).unwrap()["reason"].clone();
    assert!(
        broken_reason.as_str().unwrap().contains("[python-syntax]"),
        "{broken_reason}"
    );

    // Every line logged for a job names its batch and run, and an attempt's
    // end its number.
    let claimed = lines.iter().filter(|f| f["message"] == "claimed").count();
    assert_eq!(claimed, 2);
    let for_jobs: Vec<_> = lines.iter().filter(|f| !f["job_id"].is_null()).collect();
    assert!(for_jobs.len() > 2 * 3, "{for_jobs:#?}");
    for line in for_jobs {
        assert_eq!(line["batch_id"], batch_id, "{line:?}");
        assert_eq!(line["run"], 1, "{line:?}");
    }
    let ends: Vec<_> = lines
        .iter()
        .filter(|f| f["message"] == "attempt passed" || f["message"] == "attempt failed")
        .collect();
    assert_eq!(ends.len(), 4, "{ends:#?}");
    assert!(ends.iter().all(|f| f["attempt"].is_u64()), "{ends:#?}");
    drop(worker);
    d.stop().await;
}
