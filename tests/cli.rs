//! The built binaries as scripts use them, against a live dispatcher and
//! worker: the `kiln` CLI's documented exit codes, `--output json|jsonl` on
//! every command, specs from standard input, `kiln batches`, `kiln
//! workers` and `kiln report`; and the server binaries' `--help` and
//! `--version`, which must answer without connecting to anything.

mod support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln::auth::Scope;
use serde_json::{Value, json};
use support::{ADD_SCRIPT, Dispatcher, InProcessWorker, TestEnv, add_spec, bin, mock};

/// Answers `wrong_N` with a function that fails its tests.
const WRONG_SCRIPT: &str = r#"
- name: wrong
  match: "`(?P<name>wrong_\\d+)`"
  responses:
    - files:
        - path: solution.py
          content: "def {name}(a: int, b: int) -> int:\n    \"\"\"Return a - b.\"\"\"\n    return a - b\n"
"#;

struct Kiln {
    url: String,
    token: String,
    dir: PathBuf,
}

impl Kiln {
    fn run_with(&self, args: &[&str], url: &str, stdin: Option<&str>) -> Output {
        support::run_kiln(&[("KILN_URL", url), ("KILN_TOKEN", &self.token)], args, stdin)
    }

    /// Runs `kiln ARGS` and checks its exit code.
    fn expect(&self, code: i32, args: &[&str]) -> Output {
        self.expect_with(code, args, None)
    }

    fn expect_with(&self, code: i32, args: &[&str], stdin: Option<&str>) -> Output {
        let out = self.run_with(args, &self.url, stdin);
        assert_eq!(
            out.status.code(),
            Some(code),
            "kiln {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.expect(0, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kiln {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn file(&self, name: &str, content: &Value) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn jsonl(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn wrong_spec(i: usize) -> Value {
    let mut spec = add_spec(i);
    spec["entry_point"] = json!(format!("wrong_{i}"));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_documented_exit_code_and_every_commands_json_output_from_the_real_cli() {
    let env = TestEnv::new().await;
    let llm = mock(&format!("{ADD_SCRIPT}{WRONG_SCRIPT}")).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", env.queue));
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kiln {
        url: d.url.clone(),
        token: env.token(Scope::Submit).await,
        dir: dir.clone(),
    };
    let good = k.file(
        "good.json",
        &json!({"name": "good batch", "specs": [add_spec(1), add_spec(2)]}),
    );
    let bad = k.file(
        "bad.json",
        &json!({"name": "bad batch", "specs": [add_spec(3), wrong_spec(4)],
                                        "options": {"max_attempts": 1}}),
    );

    // 0: every job succeeded; `--output json` prints the final batch.
    let batch = tokio::task::block_in_place(|| k.json(&["submit", &good, "--wait", "--output", "json"]));
    assert_eq!(batch["state"], "succeeded", "{batch}");
    let good_id = batch["batch_id"].as_str().unwrap().to_owned();
    // 1: a job failed, for submit --wait, status --watch and status alike.
    let out = tokio::task::block_in_place(|| k.expect(1, &["submit", &bad, "--wait", "--output", "jsonl"]));
    let progress = jsonl(&out);
    let last = progress.last().unwrap();
    assert_eq!(last["state"], "failed", "{last}");
    let bad_id = last["batch_id"].as_str().unwrap().to_owned();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("batch {bad_id} ended failed")));
    tokio::task::block_in_place(|| {
        exit_codes_of_finished_batches_and_errors(&k, &good_id, &bad_id);
        every_commands_json_output(&k, &good, &good_id, &bad_id);
    });
    // 1 for a batch that ended cancelled too: with no worker left, its
    // jobs wait until cancelled.
    worker.stop().await;
    tokio::task::block_in_place(|| {
        let submitted = k.json(&["submit", &good, "-o", "json"]);
        let id = submitted["batch_id"].as_str().unwrap();
        assert_eq!(k.json(&["cancel", id, "-o", "json"])["cancelled"], 2);
        let out = k.expect(1, &["status", id, "--watch"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("batch {id} ended cancelled")),
            "{out:?}"
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
    d.stop().await;
}

/// Exit codes 1 to 4 against the finished batches (0 is shown by the
/// commands' JSON output).
fn exit_codes_of_finished_batches_and_errors(k: &Kiln, good_id: &str, bad_id: &str) {
    let dir = &k.dir;
    k.expect(1, &["status", bad_id, "--watch"]);
    k.expect(1, &["status", bad_id]);
    k.expect(0, &["status", good_id]);

    // 2: usage — bad arguments, a missing or malformed spec file, a request the API refuses.
    k.expect(2, &["frobnicate"]);
    k.expect(2, &["status"]);
    k.expect(2, &["jobs", good_id, "--output", "yaml"]);
    k.expect(2, &["submit", dir.join("missing.yaml").to_str().unwrap()]);
    let out = k.expect(
        2,
        &[
            "submit",
            &k.file("broken.json", &json!({"specs": [{"kind": "function"}]})),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 400"), "{out:?}");
    k.expect(2, &["retry"]);
    k.expect(2, &["rejudge"]);
    // 3: the dispatcher is unreachable.
    let out = k.run_with(&["status", good_id], "http://127.0.0.1:9", None);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // 4: not found.
    let missing = uuid::Uuid::new_v4().to_string();
    k.expect(4, &["status", &missing]);
    k.expect(4, &["job", &missing]);
    k.expect(4, &["attempts", &missing]);
    k.expect(4, &["report", &missing]);
    k.expect(4, &["cancel", "--job", &missing]);
    k.expect(4, &["rejudge", "--job", &missing]);

    // 3 also for a server error (5xx), told apart from an unreachable server.
    let out = k.run_with(&["status", good_id], &failing_server(), None);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("500"), "{out:?}");
}

/// `--output json` parses for every command, and `jsonl` line by line.
fn every_commands_json_output(k: &Kiln, good: &str, good_id: &str, bad_id: &str) {
    let dir = &k.dir;
    let missing = uuid::Uuid::new_v4().to_string();
    // `--output json` parses for every command, and `jsonl` line by line.
    let jobs = k.json(&["jobs", bad_id, "--output", "json"]);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    let failed = jobs.iter().find(|j| j["state"] == "failed").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let passed = jobs.iter().find(|j| j["state"] == "succeeded").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(jsonl(&k.expect(0, &["jobs", bad_id, "--output", "jsonl"])).len(), 2);
    assert_eq!(k.json(&["status", good_id, "-o", "json"])["batch_id"], good_id);
    // The bad batch (one attempt each): one job passed, one failed its tests.
    let report = k.json(&["report", bad_id, "-o", "json"]);
    assert_eq!(
        (&report["attempts"][0]["jobs"], &report["attempts"][0]["passed"]),
        (&json!(2), &json!(1)),
        "{report}"
    );
    assert_eq!(report["failures"], json!([{"code": "tests_failed", "count": 1}]));
    assert_eq!(jsonl(&k.expect(0, &["report", bad_id, "-o", "jsonl"])), vec![report]);
    let text = String::from_utf8_lossy(&k.expect(0, &["report", bad_id]).stdout).into_owned();
    assert!(text.contains("failed jobs: tests_failed 1"), "{text}");
    assert!(text.contains("50.0%"), "{text}");
    assert_eq!(k.json(&["job", &failed, "-o", "json"])["error"]["code"], "tests_failed");
    let attempts = k.json(&["attempts", &failed, "-o", "json"]);
    assert!(attempts[0]["tests"]["cases"].is_array(), "{attempts}");
    assert_eq!(jsonl(&k.expect(0, &["attempts", &failed, "-o", "jsonl"])).len(), 1);
    let listed = k.json(&["batches", "-o", "json"]);
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![bad_id, good_id]);
    let failed_batches = k.json(&["batches", "--state", "failed", "-o", "json"]);
    assert_eq!(failed_batches.as_array().unwrap().len(), 1);
    let named = jsonl(&k.expect(0, &["batches", "--name", "GOOD", "--limit", "5", "-o", "jsonl"]));
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["batch_id"], good_id);
    assert_eq!(
        k.json(&["batches", "--limit", "1", "-o", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let text = k.expect(0, &["batches"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("good batch"));
    let workers = k.json(&["workers", "-o", "json"]);
    assert_eq!(workers.as_array().unwrap().len(), 1, "{workers}");
    let out_dir = dir.join("out");
    let files = k.json(&["download", &passed, out_dir.to_str().unwrap(), "-o", "json"]);
    assert!(files[0].as_str().unwrap().ends_with("solution.py"), "{files}");
    assert_eq!(
        k.json(&["retry", "--job", &failed, "-o", "json"]),
        json!({"requeued": 1})
    );
    assert_eq!(k.json(&["cancel", bad_id, "-o", "json"])["cancelled"], 1);
    assert_eq!(
        k.json(&["retry", bad_id, "--states", "cancelled", "-o", "json"]),
        json!({"requeued": 1})
    );
    let cancelled = k.json(&["cancel", "--job", &failed, "-o", "json"]);
    assert!(cancelled["cancelled"].is_number(), "{cancelled}");
    let submitted = k.json(&["submit", good, "-o", "json"]);
    assert_eq!(submitted["job_ids"].as_array().unwrap().len(), 2, "{submitted}");
    assert_eq!(k.json(&["rejudge", good_id, "-o", "json"]), json!({"rejudged": 2}));
    // A 404 is 4 with JSON output too, and says why on stderr only.
    let out = k.expect(4, &["job", &missing, "-o", "json"]);
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_review_decides_and_waiting_on_a_review_batch_stops_at_jobs_awaiting_review_with_exit_code_5() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let mut k = Kiln {
        url: d.url.clone(),
        token: env.token(Scope::Submit).await,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let path = k.file(
        &format!("review-{}.json", env.queue),
        &json!({"name": "reviewed", "specs": [add_spec(1), add_spec(2)], "options": {"review": true}}),
    );
    let admin = env.token(Scope::Admin).await;
    tokio::task::block_in_place(|| {
        // `--wait` returns once nothing is left to run: 5, jobs await review.
        let out = k.expect(5, &["submit", &path, "--wait", "-o", "json"]);
        let batch: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(batch["state"], "awaiting_review", "{batch}");
        assert_eq!(batch["counts"]["awaiting_review"], 2, "{batch}");
        let id = batch["batch_id"].as_str().unwrap().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("2 jobs await review"), "{stderr}");
        let out = k.expect(5, &["status", &id, "--watch"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("2 awaiting review"),
            "{out:?}"
        );
        let jobs = k.json(&["jobs", &id, "--state", "awaiting_review", "-o", "json"]);
        let jobs: Vec<String> = jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(jobs.len(), 2);

        // A submit token may not decide (403: usage, 2); an admin's may.
        k.expect(2, &["review", &jobs[0], "--approve"]);
        // Exactly one decision is given.
        k.expect(2, &["review", &jobs[0]]);
        k.expect(2, &["review", &jobs[0], "--approve", "--reject"]);
        k.token = admin;
        let approved = k.json(&["review", &jobs[0], "--approve", "-o", "json"]);
        assert_eq!(approved["state"], "succeeded", "{approved}");
        // Deciding twice is a 409: 2.
        let out = k.expect(2, &["review", &jobs[0], "--reject"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{out:?}");
        let out = k.expect(0, &["review", &jobs[1], "--reject", "--comment", "too clever"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rejected: failed (rejected_in_review)"),
            "{out:?}"
        );
        let job = k.json(&["job", &jobs[1], "-o", "json"]);
        assert_eq!(job["error"]["message"], "too clever", "{job}");
        // The batch has ended, failed by the rejection: 1.
        k.expect(1, &["status", &id, "--watch"]);
    });
    worker.stop().await;
    d.stop().await;
}

/// The URL of a server that answers every request with `status` and the
/// JSON `body`.
fn canned_server(status: &'static str, body: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0_u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// The URL of a server that answers every request with HTTP 500.
fn failing_server() -> String {
    canned_server(
        "500 Internal Server Error",
        r#"{"error": {"code": "internal", "message": "internal error"}}"#,
    )
}

/// A report as the dispatcher writes it, with floats whose shortest text
/// is 17 digits (Postgres's percentiles give such values).
const REPORT: &str = r#"{"batch_id":"01a23dda-f4b3-7705-9dcd-306cbdfe3670","total":3,"counts":{"queued":0,"running":0,"awaiting_review":0,"succeeded":3,"failed":0,"cancelled":0},"attempts":[{"n":1,"jobs":3,"passed":3,"failed":0,"errored":0,"running":0,"pass_rate":1.0,"passed_by_now":3,"cumulative_pass_rate":1.0}],"usage":{"prompt_tokens":1200,"completion_tokens":108,"cost_usd":0.30000000000000004},"per_success":{"prompt_tokens":400.0,"completion_tokens":36.0},"phases":[{"phase":"queue","count":3,"p50_ms":275.884,"p90_ms":277.98400000000004,"p99_ms":278.4565,"max_ms":278.509},{"phase":"validate","count":2,"p50_ms":2.5,"p90_ms":3.7,"p99_ms":3.9699999999999998,"max_ms":4.0}],"failures":[],"attempt_failures":[],"rules":[]}"#;

#[test]
fn kiln_report_prints_the_dispatchers_floats_digit_for_digit() {
    let url = canned_server("200 OK", REPORT);
    let out = Command::new(bin("kiln"))
        .env("KILN_URL", &url)
        .args(["report", "01a23dda-f4b3-7705-9dcd-306cbdfe3670", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Numbers keep their text in a Value (arbitrary_precision): equal
    // values are equal digit for digit.
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, serde_json::from_str::<Value>(REPORT).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_dash_reads_yaml_or_json_specs_from_standard_input() {
    let env = TestEnv::new().await;
    let llm = mock(ADD_SCRIPT).await;
    let settings = env.settings(&llm.base_url(), &[("KILN_AUTH", "required")]);
    let d = Dispatcher::start(&settings).await;
    let worker = InProcessWorker::start(&settings).await;
    let k = Kiln {
        url: d.url.clone(),
        token: env.token(Scope::Submit).await,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let yaml = "name: from stdin\nspecs:\n  - kind: function\n    task_description: Return the sum of a and b.\n    \
                entry_point: add_7\n    test_cases:\n      - {input: [1, 2], expected: 3}\n";
    let batch = tokio::task::block_in_place(|| {
        let out = k.expect_with(0, &["submit", "-", "--wait", "-o", "json"], Some(yaml));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    });
    assert_eq!(
        (batch["name"].as_str(), batch["state"].as_str()),
        (Some("from stdin"), Some("succeeded")),
        "{batch}"
    );
    let json_list = Value::Array(vec![add_spec(8), add_spec(9)]).to_string();
    let created = tokio::task::block_in_place(|| {
        let out = k.expect_with(0, &["submit", "-", "-o", "json"], Some(&json_list));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    });
    assert_eq!(created["job_ids"].as_array().unwrap().len(), 2);
    // Broken input names standard input and is a usage error.
    let out = tokio::task::block_in_place(|| k.expect_with(2, &["submit", "-"], Some("{\"specs\": [")));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standard input"),
        "{out:?}"
    );
    worker.stop().await;
    d.stop().await;
}

/// Nothing listens on these: a server binary that tried to start would fail
/// or hang retrying instead of answering at once.
const UNREACHABLE: [(&str, &str); 4] = [
    ("KILN_DATABASE_URL", "postgres://127.0.0.1:1/none"),
    ("KILN_REDIS_URL", "redis://127.0.0.1:1"),
    ("KILN_HTTP_ADDR", "0.0.0.0:1"),
    ("KILN_AUTH", "required"),
];

#[test]
fn the_server_binaries_answer_help_and_version_without_starting_anything() {
    let unreachable = UNREACHABLE;
    for name in ["kiln-dispatcher", "kiln-worker", "kiln"] {
        for (flag, expect) in [
            ("--help", "Usage:"),
            ("-h", "Usage:"),
            ("--version", env!("CARGO_PKG_VERSION")),
        ] {
            let started = Instant::now();
            let out = Command::new(bin(name))
                .envs(unreachable)
                .arg(flag)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name} {flag}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(expect), "{name} {flag}: {stdout}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} {flag} took {:?}",
                started.elapsed()
            );
        }
        // An unknown flag is a usage error (2), not a start.
        let out = Command::new(bin(name))
            .envs(unreachable)
            .arg("--frobnicate")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
    }
    let help = Command::new(bin("kiln")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for code in [
        "0 all succeeded",
        "1 jobs failed",
        "2 usage",
        "3 server or network error",
        "4 not found",
        "5 jobs await review",
    ] {
        assert!(help.contains(code), "kiln --help does not document {code:?}");
    }
}

/// Acceptance 6: a typo, in a variable or in the config file, stops either
/// server at start-up naming it and the closest setting, where it used to
/// leave the default silently in force.
#[test]
fn a_typo_in_a_variable_or_a_config_key_stops_the_servers_naming_the_closest_setting() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config-typo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kiln.toml");
    std::fs::write(&file, "queue = \"typo-test\"\nworker_concurency = 8\n").unwrap();
    let cases = [
        (
            ("KILN_WORKER_CONCURENCY", "8"),
            "unknown variable KILN_WORKER_CONCURENCY (did you mean KILN_WORKER_CONCURRENCY?)".to_owned(),
        ),
        (
            ("KILN_CONFIG", file.to_str().unwrap()),
            format!(
                "config file {}: unknown key worker_concurency (did you mean worker_concurrency?)",
                file.display()
            ),
        ),
    ];
    for name in ["kiln-dispatcher", "kiln-worker"] {
        for (var, expect) in &cases {
            let mut child = Command::new(bin(name))
                .envs(UNREACHABLE)
                .envs([*var])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // A binary that got past its configuration would retry the
            // unreachable database; it must stop before that.
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{name} with {var:?} did not stop at start-up");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} with {var:?}: {stderr}");
            assert!(stderr.contains(expect.as_str()), "{name} with {var:?}: {stderr}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs the `kiln` binary with no dispatcher anywhere near.
fn offline(args: &[&str]) -> Output {
    let out = Command::new(bin("kiln"))
        .envs(UNREACHABLE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn kiln_schema_prints_a_json_schema_that_accepts_the_example_spec_files_and_refuses_a_misspelled_field() {
    let schema: Value = serde_json::from_slice(&offline(&["schema"]).stdout).unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap();
    for file in ["examples/specs/functions.yaml", "examples/specs/services.yaml"] {
        let value: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
    }
    let spec = add_spec(1);
    assert!(validator.is_valid(&spec), "one spec");
    assert!(
        validator.is_valid(&json!([spec.clone(), add_spec(2)])),
        "a list of specs"
    );
    assert!(
        validator.is_valid(&json!({"name": "b", "specs": [spec.clone()], "options": {"max_attempts": 2}})),
        "a batch"
    );
    let mut typo = spec.clone();
    typo["tset_cases"] = json!([]);
    assert!(!validator.is_valid(&typo), "a misspelled spec field");
    assert!(
        !validator.is_valid(&json!({"specs": [spec], "options": {"max_atempts": 2}})),
        "a misspelled option"
    );
    assert!(!validator.is_valid(&json!({"kind": "lambda"})), "an unknown kind");
}

#[test]
fn kiln_completions_prints_a_script_for_each_shell_that_names_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = offline(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["submit", "attempts", "retry", "schema"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    let out = Command::new(bin("kiln"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}
