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
fn script(entry: &str, content: &str) -> kiln_mock_llm::ScriptFile {
    serde_json::from_value(json!({
        "name": entry,
        "match": format!("`{entry}`"),
        "responses": [{"content": content}],
    }))
    .unwrap()
}

async fn mock_of(scripts: Vec<kiln_mock_llm::ScriptFile>) -> kiln_mock_llm::MockServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    kiln_mock_llm::MockServer::start(listener, scripts).expect("mock starts")
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

/// A mock script answering `{entry}` specs with these files, every attempt.
fn files_script(entry: &str, files: &[(&str, &str)]) -> kiln_mock_llm::ScriptFile {
    let files: Vec<Value> = files.iter().map(|(p, c)| json!({"path": p, "content": c})).collect();
    serde_json::from_value(json!({
        "name": entry,
        "match": format!("`{entry}`"),
        "responses": [{"files": files}],
    }))
    .unwrap()
}

fn returns_one(entry: &str) -> String {
    format!("def {entry}() -> int:\n    \"\"\"One.\"\"\"\n    return 1\n")
}

/// NUL in the sandbox's output crosses each backend's own plumbing (pipes
/// or the Docker engine's streams), so the test runs on both.
mod process {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nul_characters_from_the_model_or_the_sandbox_end_as_a_verdict_not_a_storage_loop() {
        super::nul_characters_from_the_model_or_the_sandbox_end_as_a_verdict_not_a_storage_loop("process").await;
    }
}

mod docker {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nul_characters_from_the_model_or_the_sandbox_end_as_a_verdict_not_a_storage_loop() {
        super::nul_characters_from_the_model_or_the_sandbox_end_as_a_verdict_not_a_storage_loop("docker").await;
    }
}

async fn nul_characters_from_the_model_or_the_sandbox_end_as_a_verdict_not_a_storage_loop(sandbox: &str) {
    let env = TestEnv::new().await;
    let scripts = vec![
        files_script(
            "nul_in_code",
            &[("solution.py", "def nul_in_code() -> int:\n    return 1  # \0\n")],
        ),
        files_script(
            "nul_in_path",
            &[("solution.py", &returns_one("nul_in_path")), ("notes\0.py", "x = 1\n")],
        ),
        script(
            "nul_in_prose",
            &format!("Here\0 it is:\n```python\n{}```\n", returns_one("nul_in_prose")),
        ),
        files_script(
            "nul_in_output",
            &[(
                "solution.py",
                "def nul_in_output() -> int:\n    \"\"\"One, loudly.\"\"\"\n    print(\"a\\x00b\")\n    return 1\n",
            )],
        ),
        files_script(
            "nul_in_exception",
            &[(
                "solution.py",
                "def nul_in_exception() -> int:\n    \"\"\"Fails.\"\"\"\n    raise ValueError(\"bad\\x00value\")\n",
            )],
        ),
    ];
    let llm = mock_of(scripts).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_SANDBOX", sandbox)]);
    let d = Dispatcher::start(&settings).await;
    let w = support::InProcessWorker::start(&settings).await;
    let entries = [
        "nul_in_code",
        "nul_in_path",
        "nul_in_prose",
        "nul_in_output",
        "nul_in_exception",
    ];
    let specs: Vec<Value> = entries.iter().map(|e| spec_json(e)).collect();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    let mut ends = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let job = d.client.job(created["job_ids"][i].as_str().unwrap()).await.unwrap();
        ends.push((
            *entry,
            job["state"].as_str().unwrap().to_owned(),
            job["error"]["code"].as_str().map(str::to_owned),
        ));
    }
    let failed = |code: &str| ("failed".to_owned(), Some(code.to_owned()));
    let got: Vec<(String, Option<String>)> = ends.iter().map(|(_, s, c)| (s.clone(), c.clone())).collect();
    assert_eq!(
        got,
        vec![
            failed("validation_failed"),
            failed("validation_failed"),
            ("succeeded".to_owned(), None),
            ("succeeded".to_owned(), None),
            failed("tests_failed"),
        ],
        "{ends:?}"
    );
    let (attempts, faults): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(llm_faults + sandbox_faults), 0)::int8 FROM attempts")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((attempts, faults), (5, 0), "one attempt each, nothing retried");
    assert_eq!(llm.requests().len(), 5, "the model was asked once per job");
    let a = d.attempts(created["job_ids"][0].as_str().unwrap(), false).await;
    let rules: Vec<&str> = a[0]["validation"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"content-nul"), "{rules:?}");
    w.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_of_an_answer_with_escaping_paths_leaves_those_files_out() {
    use std::io::Read;
    let env = TestEnv::new().await;
    let llm = mock_of(vec![files_script(
        "escaper",
        &[
            ("solution.py", &returns_one("escaper")),
            ("../up.py", "x = 1\n"),
            ("/etc/abs.py", "x = 1\n"),
            ("..\\..\\win.py", "x = 1\n"),
        ],
    )])
    .await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let w = support::InProcessWorker::start(&settings).await;
    let created = d
        .client
        .submit(
            &json!({"specs": [spec_json("escaper")], "options": {"max_attempts": 1}}),
            None,
        )
        .await
        .unwrap();
    wait_for_batch(
        &d.client,
        created["batch_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let job = created["job_ids"][0].as_str().unwrap();
    let response = reqwest::get(format!("{}/v1/jobs/{job}/artifacts?run=1&attempt=1", d.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kiln-skipped-files"], "3");
    let bytes = response.bytes().await.unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["solution.py".to_owned()]);
    // Left out of the archive, each stays readable on its own as text,
    // never as a 5xx.
    for path in ["../up.py", "/etc/abs.py", "..\\..\\win.py"] {
        let encoded: String = path
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_owned(),
                b'\\' => "%5C".to_owned(),
                _ => (b as char).to_string(),
            })
            .collect();
        let response = reqwest::get(format!("{}/v1/jobs/{job}/files/{encoded}?run=1&attempt=1", d.url))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8",
            "{path}"
        );
        assert_eq!(response.text().await.unwrap(), "x = 1\n", "{path}");
    }
    w.stop().await;
    d.stop().await;
}

/// Kinds of answer `fuzzed_answer` makes.
const ANSWER_KINDS: usize = 24;

/// One generated hostile answer of `kind` for the spec `entry`: (content,
/// finish reason). Sizes, depths and the finish reason are random.
fn fuzzed_answer(rng: &mut rand::rngs::StdRng, entry: &str, kind: usize) -> (String, &'static str) {
    use rand::Rng;
    let good = returns_one(entry);
    let depth = rng.random_range(1_000..30_000);
    let nest = |open: &str, close: &str| format!("{good}\nx = {}1{}\n", open.repeat(depth), close.repeat(depth));
    let files = |files: &[(&str, &str)]| answer_files(files);
    let content = match kind % ANSWER_KINDS {
        0 => files(&[("solution.py", &good)]),
        1 => files(&[("solution.py", &nest("[", "]"))]),
        2 => files(&[("solution.py", &nest("f(", ")"))]),
        3 => files(&[("solution.py", &nest("not ", ""))]),
        4 => files(&[("solution.py", &nest("-", ""))]),
        5 => files(&[("solution.py", &format!("{good}\nx = a{}\n", ".b".repeat(depth)))]),
        6 => files(&[("solution.py", &format!("{good}\nx = {}1\n", "1+".repeat(depth)))]),
        7 => files(&[(
            "solution.py",
            &format!("{good}# {}\n", "x".repeat(rng.random_range(400_000..700_000))),
        )]),
        8 => {
            let many: Vec<(String, String)> = (0..rng.random_range(60..80))
                .map(|i| (format!("m{i}.py"), "x = 1\n".to_owned()))
                .collect();
            let mut all: Vec<(&str, &str)> = many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
            all.push(("solution.py", &good));
            files(&all)
        }
        9 => files(&[("solution.py", &format!("{good}\0"))]),
        10 => files(&[("solution.py", &good), ("a\0b.py", "x = 1\n")]),
        11 => files(&[
            ("solution.py", &good),
            ("../../etc/x.py", "x = 1\n"),
            ("/abs.py", "x = 1\n"),
        ]),
        12 => files(&[
            ("solution.py", &good),
            ("..\\..\\x.py", "x = 1\n"),
            ("CON.py", "x = 1\n"),
            ("a\u{202E}b.py", ""),
        ]),
        13 => files(&[("solution.py", &format!("\u{FEFF}{good}"))]),
        14 => format!("{{\"files\": [{{\"path\": \"solution.py\", \"content\": \"\\ud800{entry}\"}}]}}"),
        15 => format!("{}{}", "[".repeat(rng.random_range(100..5_000)), "]".repeat(10)),
        16 => format!("{{\"files\": {}}}", "{\"a\": ".repeat(200)),
        17 => "{\"files\": [{\"path\": 3, \"content\": null}]}".to_owned(),
        18 => format!("```python\n{good}```\n\0trailing"),
        19 => {
            let mut bytes = files(&[("solution.py", &good)]);
            bytes.truncate(bytes.len() / 2);
            bytes
        }
        20 => files(&[(
            "solution.py",
            &format!("def {entry}() -> int:\n    \"\"\"Wrong.\"\"\"\n    return 2\n"),
        )]),
        21 => files(&[(
            "solution.py",
            &format!(
                "def {entry}() -> int:\n    \"\"\"Loud.\"\"\"\n    print('\\x00' * 1000, 'é' * 1000)\n    raise ValueError('\\x00\\udcff')\n"
            ),
        )]),
        22 => files(&[("solution.py", &format!("{good}\ns = '{}'\n", "\\x00".repeat(1000)))]),
        _ => String::new(),
    };
    let finish = if rng.random_bool(0.1) { "length" } else { "stop" };
    (content, finish)
}

fn answer_files(files: &[(&str, &str)]) -> String {
    let files: Vec<Value> = files.iter().map(|(p, c)| json!({"path": p, "content": c})).collect();
    json!({ "files": files }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_answers_never_kill_the_worker_and_each_ends_as_a_pass_or_the_models_failure() {
    use rand::SeedableRng;
    const ANSWERS: usize = 10 * ANSWER_KINDS;
    let seed: u64 = std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x616e_7377);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = TestEnv::new().await;
    let scripts: Vec<kiln_mock_llm::ScriptFile> = (0..ANSWERS)
        .map(|i| {
            let entry = format!("fuzz_{i}");
            // Every kind, ten times over.
            let (content, finish) = fuzzed_answer(&mut rng, &entry, i);
            serde_json::from_value(json!({
                "name": entry,
                "match": format!("`{entry}`"),
                "responses": [{"content": content, "finish_reason": finish}],
            }))
            .unwrap()
        })
        .collect();
    let llm = mock_of(scripts).await;
    let settings = env.settings(&llm.base_url(), &[]);
    let d = Dispatcher::start(&settings).await;
    let mut worker = Proc::spawn(
        "kiln-worker",
        &env.vars(
            &llm.base_url(),
            &[("KILN_WORKER_ID", "fuzz"), ("KILN_WORKER_CONCURRENCY", "4")],
        ),
    );
    let specs: Vec<Value> = (0..ANSWERS).map(|i| spec_json(&format!("fuzz_{i}"))).collect();
    let created = d
        .client
        .submit(&json!({"specs": specs, "options": {"max_attempts": 1}}), None)
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let batch = loop {
        // Checked first: a dead worker leaves the batch unfinished for ever.
        assert!(worker.0.try_wait().unwrap().is_none(), "seed {seed}: the worker died");
        let batch = d.client.batch(batch_id).await.unwrap();
        if batch["finished_at"].is_string() {
            break batch;
        }
        assert!(std::time::Instant::now() < deadline, "seed {seed}: unfinished: {batch}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ends: Vec<(String, Option<String>, i32)> =
        sqlx::query_as("SELECT state, error_code, crashes FROM jobs ORDER BY position")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    for (i, (state, code, crashes)) in ends.iter().enumerate() {
        let fine = *crashes == 0
            && (state == "succeeded"
                || (state == "failed"
                    && matches!(
                        code.as_deref(),
                        Some("validation_failed" | "invalid_response" | "tests_failed")
                    )));
        assert!(
            fine,
            "seed {seed}: fuzz_{i} ended {state} {code:?} after {crashes} crashes; {batch}"
        );
    }
    let mut tally = std::collections::BTreeMap::<(&str, Option<&str>), usize>::new();
    for (state, code, _) in &ends {
        *tally.entry((state.as_str(), code.as_deref())).or_default() += 1;
    }
    eprintln!(
        "seed {seed}: {} answers of {ANSWER_KINDS} kinds ended {tally:?}",
        ends.len()
    );
    assert_eq!(ends.len(), ANSWERS);
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "seed {seed}: the worker died at the end"
    );
    assert_eq!(
        llm.requests().len(),
        ANSWERS,
        "seed {seed}: each answer was asked for once"
    );
    d.stop().await;
}
